"""What the client scripts under integration-tests/clients share: a list of named checks that
prints each result, a step heading, and the OpenAI test server's answer rules
(integration-tests/src/openai_server.rs), from which the scripts compute what a call must
return."""


class Checks:
    def __init__(self):
        self.failures = []

    def check(self, ok, message):
        print(("  ok   " if ok else "  FAIL ") + message, flush=True)
        if not ok:
            self.failures.append(message)
        return ok


def step(title):
    print(f"\n== {title}", flush=True)


# The test server's rules: chat answers "echo: " and the last user message; a completion is the
# prompt reversed; a stream sends the answer word by word.
def chat_answer(messages):
    users = [m["content"] for m in messages if m["role"] == "user"]
    return "echo: " + (users[-1] if users else "")


def completion_of(prompt):
    return prompt[::-1]


def pieces_of(text):
    words = text.split(" ")
    return [w if n == 0 else " " + w for n, w in enumerate(words)]
