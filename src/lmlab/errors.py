"""The one exception type that the CLI turns into a clean one-line message."""


class LmlabError(Exception):
    """A problem with the user's input or environment (not a bug in lmlab).

    The CLI prints ``error: <message>`` and exits with status 2, without a
    traceback unless ``--debug`` is given. Messages should name the file or
    step at fault and what to do about it.
    """
