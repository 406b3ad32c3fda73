"""Progress output: bars on a terminal, one line per step when the output is a file."""
import sys

__all__ = ['show_bars', 'labelled_bar', 'plural']


def show_bars(quiet=False):
    "Whether to draw progress bars: not when asked to be quiet, nor when the output is not a terminal (a log file)."
    return not quiet and sys.stdout.isatty()


def labelled_bar(what):
    "A callable wrapping an iterable in a fastprogress bar whose comment says `what` is progressing."
    from fastprogress.fastprogress import progress_bar
    def bar(items):
        pb = progress_bar(items)
        pb.comment = what
        return pb
    return bar


def plural(n, word, many=None):
    "'1 fold model', '2 fold models'."
    return f"{n} {word if n == 1 else many or word + 's'}"
