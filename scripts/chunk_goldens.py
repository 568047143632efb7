#!/usr/bin/env python3
"""Reference outputs for pgml.chunk, from LangChain exactly as PostgresML calls it.

Reads a corpus (a JSON list of {"splitter", "text", "kwargs"}) from the file named on the
command line, or from stdin, and prints a JSON list with, per case, either
{"chunks": [...]} or {"error": "<Python exception class name>"}.

PostgresML (pgml-extension/src/bindings/langchain/langchain.py) maps the splitter name to a
LangChain class and runs `Class(**json.loads(kwargs)).split_text(text)`; chunk_index is the
1-based position. Used by chunk/tests/golden.rs (pgml-chunk's golden test).
"""
import json
import logging
import sys

from langchain_text_splitters import (
    CharacterTextSplitter,
    LatexTextSplitter,
    MarkdownTextSplitter,
    NLTKTextSplitter,
    PythonCodeTextSplitter,
    RecursiveCharacterTextSplitter,
    SpacyTextSplitter,
)

SPLITTERS = {
    "character": CharacterTextSplitter,
    "latex": LatexTextSplitter,
    "markdown": MarkdownTextSplitter,
    "nltk": NLTKTextSplitter,
    "python": PythonCodeTextSplitter,
    "recursive_character": RecursiveCharacterTextSplitter,
    "spacy": SpacyTextSplitter,
}


def chunk(splitter, text, args):
    # PostgresML's chunk(), verbatim in behaviour: kwargs arrive as JSON text.
    kwargs = json.loads(args)
    if splitter in SPLITTERS:
        return SPLITTERS[splitter](**kwargs).split_text(text)
    raise ValueError("Unknown splitter: {}".format(splitter))


def main():
    # "Created a chunk of size X, which is longer than the specified Y" is only a warning.
    logging.disable(logging.WARNING)
    source = open(sys.argv[1], encoding="utf-8") if len(sys.argv) > 1 else sys.stdin
    corpus = json.load(source)
    results = []
    for case in corpus:
        try:
            chunks = chunk(case["splitter"], case["text"], json.dumps(case.get("kwargs", {})))
            results.append({"chunks": chunks})
        except Exception as err:  # the class is the expected answer
            results.append({"error": type(err).__name__})
    json.dump(results, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
