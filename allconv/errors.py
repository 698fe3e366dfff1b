"""The one exception type users see: a one-line message naming the problem and the fix."""


class AllconvError(Exception):
    """Bad input (unknown model, unreadable data, corrupt checkpoint...). CLIs print it as one line."""
