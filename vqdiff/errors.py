"""Errors that are the user's to fix: run.py prints them as one line, without a traceback."""


class UserError(Exception):
    """A problem with the config, flags, files or workdir, with a message that says what to do."""
