"""Errors a user can fix: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """A mistake in the user's input or configuration (bad file, unknown name, ...)."""


class CorpusError(UserError):
    """A corpus file that cannot be read; the message names the file and line."""

    def __init__(self, path, line, message):
        self.path, self.line = str(path), line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
