"""One error type for bad input, shown to users as a single line with exit code 2."""

__all__ = ['TheraError', 'EXIT_BAD_INPUT']

EXIT_BAD_INPUT = 2


class TheraError(Exception):
    "Bad input or an impossible request: the message names the file and the problem."
    def __init__(self, message, path=None):
        super().__init__(f"{path}: {message}" if path is not None else message)
