"""One error type for bad input, shown to users as a single line with exit code 2."""

__all__ = ['TheraError', 'EXIT_BAD_INPUT']

EXIT_BAD_INPUT = 2


class TheraError(Exception):
    """Bad input or an impossible request: the message names the file (`path`) or the parameter (`param`).

    The library names parameters as Python spells them (`folds`); the command line shows the
    same error with the flag (`--folds`) through `cli_message`."""
    def __init__(self, message, path=None, param=None):
        self.message, self.path, self.param = message, path, param
        super().__init__(self._text(param))

    def _text(self, name):
        where = f"{self.path}: " if self.path is not None else ''
        return f"{where}{name} {self.message}" if name else f"{where}{self.message}"

    def cli_message(self):
        "The message with the parameter written as its command-line flag."
        return self._text(f"--{self.param.replace('_', '-')}" if self.param else None)
