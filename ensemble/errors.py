"""The one base class for errors a user can fix (a bad file, a missing model, a wrong option).

The CLI prints these as one line, `ensemble COMMAND: error: ...`, and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error whose message alone tells the user what to fix."""


def a_or_an(word: str) -> str:
    """`word` with its indefinite article, for messages: "an abc", "a notes"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
