"""User-facing errors: the CLI prints the message as one sentence and exits non-zero."""


class QAPrunerError(Exception):
    """An error a user can cause and fix (bad option, missing dataset, unsupported model)."""
