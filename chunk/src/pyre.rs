//! Python `re` behaviour on top of `fancy-regex`: the pattern syntax differences that
//! LangChain's separators run into, and `re.split`'s output layout and empty-match rules.

use fancy_regex::{Regex, RegexBuilder};

use crate::ChunkError;

/// Backtracking steps allowed per search: enough for any sane separator on a large text (an
/// unanchored search of a look-around pattern spends one per start position), not enough to
/// hang on a catastrophic pattern.
fn backtrack_limit(text_len: usize) -> usize {
    text_len.saturating_mul(64).max(1_000_000)
}

/// Compiles a Python `re` pattern for searching a text of `text_len` bytes. Patterns Python
/// would reject (and the few Python features `fancy-regex` lacks) are
/// [`ChunkError::InvalidRegex`].
pub(crate) fn compile(pattern: &str, text_len: usize) -> Result<Regex, ChunkError> {
    RegexBuilder::new(&translate(pattern))
        .backtrack_limit(backtrack_limit(text_len))
        .build()
        .map_err(|err| ChunkError::InvalidRegex {
            pattern: pattern.to_owned(),
            reason: err.to_string(),
        })
}

/// A search that gave up (the backtracking limit), as an error (naming the translated pattern).
pub(crate) fn runtime_error(pattern: &str, err: &fancy_regex::Error) -> ChunkError {
    ChunkError::RegexTooComplex {
        pattern: pattern.to_owned(),
        reason: err.to_string(),
    }
}

/// Rewrites Python spellings into `fancy-regex` ones: a `{` that does not start a repetition
/// (and a lone `}`) is a literal, `{,n}` means `{0,n}`, `\Z` is `\z`, `\0oo` is octal, `\b`
/// in a class is backspace, `[`, `&`, `~` inside a class are literals (nesting and set
/// operators in `regex`), `$` also matches before a final newline, `\s` includes U+001C..U+001F
/// (`str.isspace`) and `\w` is `str.isalnum()` or `_`.
fn translate(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    out.push('\\'); // dangling escape: invalid in both dialects
                    break;
                };
                i += 2;
                if n == '0' {
                    let mut value = 0u32;
                    let mut digits = 0;
                    while digits < 2 {
                        match chars.get(i).and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                value = value * 8 + d;
                                i += 1;
                                digits += 1;
                            }
                            None => break,
                        }
                    }
                    out.push_str(&format!("\\x{{{value:X}}}"));
                } else if n == 'Z' && !in_class {
                    out.push_str("\\z");
                } else if n == 'b' && in_class {
                    out.push_str("\\x08");
                } else if let Some(class) = python_class(n) {
                    // Inside a class, a nested class is a union.
                    out.push_str(class);
                } else if n.is_ascii_alphanumeric() {
                    out.push('\\');
                    out.push(n);
                } else {
                    push_literal(&mut out, n);
                }
                continue;
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if chars.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
                continue;
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '[' | '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '{' if !in_class => {
                if let Some((quantifier, next)) = repetition(&chars, i) {
                    out.push_str(&quantifier);
                    i = next;
                    continue;
                }
                out.push_str("\\{");
            }
            '}' if !in_class => out.push_str("\\}"),
            '$' if !in_class => out.push_str("(?:\\z|(?=\n\\z))"),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// Python's `{m}`, `{m,}`, `{,n}`, `{m,n}`, `{,}` at `chars[at]` (a `{`), in `regex` syntax,
/// with the index after the closing brace; `None` where Python reads a literal `{`.
fn repetition(chars: &[char], at: usize) -> Option<(String, usize)> {
    let mut i = at + 1;
    if chars.get(i) == Some(&'}') {
        return None;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while chars.get(*i).is_some_and(char::is_ascii_digit) {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let lo = digits(&mut i);
    let comma = chars.get(i) == Some(&',');
    let hi = if comma {
        i += 1;
        digits(&mut i)
    } else {
        String::new()
    };
    if chars.get(i) != Some(&'}') {
        return None;
    }
    let lo = if lo.is_empty() { "0".to_owned() } else { lo };
    let quantifier = if comma {
        format!("{{{lo},{hi}}}")
    } else {
        format!("{{{lo}}}")
    };
    Some((quantifier, i + 1))
}

/// Python's meaning of `\s`, `\S`, `\w`, `\W` for `str` patterns, as a `regex` class.
fn python_class(escape: char) -> Option<&'static str> {
    match escape {
        's' => Some("[\\s\\x1C-\\x1F]"),
        'S' => Some("[^\\s\\x1C-\\x1F]"),
        'w' => Some("[\\p{L}\\p{N}_]"),
        'W' => Some("[^\\p{L}\\p{N}_]"),
        _ => None,
    }
}

fn push_literal(out: &mut String, c: char) {
    if c.is_ascii_punctuation() {
        out.push('\\');
    }
    out.push(c);
}

/// `re.split(pattern, text)` (`with_match` false) or `re.split(f"({pattern})", text)`
/// (`with_match` true), item by item to `each`: the texts between matches, each match preceded
/// (when `with_match`) by the whole match and then by the pattern's own groups (`None` for a
/// group that did not take part). Matches are found as Python 3.7+ does: an empty match is
/// allowed right after a non-empty one, but not at the position where the previous empty match
/// was. Items are handed on as found, never collected: one per code point is possible.
pub(crate) fn split_each<'t, E: From<ChunkError>>(
    re: &Regex,
    text: &'t str,
    with_match: bool,
    mut each: impl FnMut(Option<&'t str>) -> Result<(), E>,
) -> Result<(), E> {
    let groups = re.captures_len();
    let first_group = if with_match { 0 } else { 1 };
    let mut pos = 0;
    let mut last = 0;
    let mut must_advance = false;
    while pos <= text.len() {
        let mut start = pos;
        let caps = loop {
            let found = re
                .captures_from_pos(text, start)
                .map_err(|err| runtime_error(re.as_str(), &err))?;
            let Some(caps) = found else {
                break None;
            };
            let Some(m) = caps.get(0) else { break None };
            if must_advance && m.start() == pos && m.end() == pos {
                // An empty match where the previous empty one was: look from the next char.
                match text[pos..].chars().next() {
                    Some(c) if start == pos => {
                        start = pos + c.len_utf8();
                        continue;
                    }
                    _ => break None,
                }
            }
            break Some(caps);
        };
        let Some(caps) = caps else { break };
        let Some(m) = caps.get(0) else { break };
        each(Some(&text[last..m.start()]))?;
        for g in first_group..groups {
            each(caps.get(g).map(|g| g.as_str()))?;
        }
        must_advance = m.start() == m.end();
        last = m.end();
        pos = m.end();
    }
    each(Some(&text[last..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_python_only_syntax() {
        assert_eq!(translate("\\n\\\\chapter{"), "\\n\\\\chapter\\{");
        assert_eq!(translate("\\n#{1,6} "), "\\n#{1,6} ");
        assert_eq!(translate("a{,3}b{}c{2,}"), "a{0,3}b\\{\\}c{2,}");
        assert_eq!(translate("[[&]\\Z"), "[\\[\\&]\\z");
        assert_eq!(translate("a$"), "a(?:\\z|(?=\n\\z))");
        assert_eq!(translate("[$\\s]"), "[$[\\s\\x1C-\\x1F]]");
        assert_eq!(translate("\\ \\-"), " \\-");
    }

    fn split(re: &Regex, text: &str, with_match: bool) -> Vec<Option<String>> {
        let mut items = Vec::new();
        split_each::<ChunkError>(re, text, with_match, |item| {
            items.push(item.map(str::to_owned));
            Ok(())
        })
        .unwrap();
        items
    }

    #[test]
    fn split_like_python() {
        let re = compile("a*", 4).unwrap();
        // re.split('a*', 'baac') == ['', 'b', '', 'c', '']
        let got: Vec<_> = split(&re, "baac", false).into_iter().flatten().collect();
        assert_eq!(got, ["", "b", "", "c", ""]);
        let re = compile("(x)(y)?", 3).unwrap();
        assert_eq!(
            split(&re, "axb", false),
            [Some("a".into()), Some("x".into()), None, Some("b".into())]
        );
        // Python's `$` also matches before a final newline: re.split('$', 'a\n')
        let re = compile("$", 2).unwrap();
        assert_eq!(
            split(&re, "a\n", false),
            [Some("a".into()), Some("\n".into()), Some(String::new())]
        );
    }
}
