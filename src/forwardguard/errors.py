"""The one exception type a user sees as a one-line message."""


class ForwardguardError(Exception):
    """An error caused by the user's input or environment, reported without a traceback.

    The CLI prints ``str(error)`` on one line and exits non-zero; library callers can catch it.
    """
