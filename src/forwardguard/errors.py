"""The one exception type a user sees as a one-line message."""


class ForwardguardError(Exception):
    """An error caused by the user's input or environment, reported without a traceback.

    The CLI prints ``str(error)`` on one line and exits non-zero; library callers can catch it.
    """


def one_line(message: str) -> str:
    """``message`` with its control characters escaped (a newline as ``\\n``), so that a file name or
    any other text a user chose can't split an error line or forge another log line."""
    return "".join(_escape(character) for character in message)


def _escape(character: str) -> str:
    if character.isprintable() or character == " ":
        return character
    return character.encode("unicode_escape").decode("ascii")
