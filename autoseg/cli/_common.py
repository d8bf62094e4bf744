"""Arguments shared by the commands (data root, dataset, workers, shard) and checked number types.

Every numeric option goes through one of the types below, so a value out of range is refused while the
arguments are parsed, before any work, as one line that names the option and gives a valid example.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn, TypeVar

from autoseg.data.splits import parse_fold
from autoseg.errors import AutosegError
from autoseg.paths import DatasetPaths, data_root, resolve_dataset

N = TypeVar("N", int, float)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``PROG: error: problem; fix``, exit 2) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        tail = "" if "; " in message else f"; see {self.prog} --help"
        self.exit(2, f"{self.prog}: error: {message}{tail}\n")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Help texts state their own defaults, so no automatic "(default: ...)" suffix."""
    return Parser(prog=prog, description=description)


def number(kind: type[N], example: str, low: N | None = None, high: N | None = None,
           above: N | None = None) -> Callable[[str], N]:
    """argparse ``type``: a finite ``kind`` with ``low <= x`` (or ``above < x``) and ``x <= high``.

    ``example`` is a valid use of the option (``--lr 0.01``), given in the error with the accepted range.
    """
    word = "a whole number" if kind is int else "a number"

    def show(v: N) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    if low is not None and high is not None:
        wanted = f"{word} from {show(low)} to {show(high)}"
    else:
        bounds = [f"of at least {show(low)}" if low is not None else "",
                  f"above {show(above)}" if above is not None else "", f"at most {show(high)}" if high is not None else ""]
        wanted = " ".join([word, " and ".join(b for b in bounds if b)]).strip()

    def convert(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}; e.g. {example}") from None
        if not math.isfinite(value) or (low is not None and value < low) or (above is not None and value <= above) \
                or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} must be {wanted}; e.g. {example}")
        return value

    convert.__name__ = kind.__name__   # argparse names the type in its own messages
    return convert


def workers_arg(flag: str = "-np") -> Callable[[str], int]:
    """Worker processes or threads: 1 or more."""
    return number(int, f"{flag} 2", low=1)


THREADS = number(int, "--threads 4", low=1)


def add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None,
                   help="data root holding raw/, preprocessed/, results/ (default: $AUTOSEG_HOME or ./autoseg_data)")


def add_dataset(p: argparse.ArgumentParser) -> None:
    add_home(p)
    p.add_argument("-d", "--dataset", default=None,
                   help="dataset number (1), name (BraTS) or folder (Dataset001_BraTS); optional when only one exists")


def dataset_paths(args: argparse.Namespace) -> DatasetPaths:
    return resolve_dataset(data_root(args.home), args.dataset)


def shard_arg(text: str) -> tuple[int, int]:
    """argparse ``type`` of ``--shard i/n`` (0-based i) -> (i, n)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form i/n; e.g. --shard 0/4 for the first of "
                                         "four jobs") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text}: need 0 <= i < n; e.g. --shard 3/4 for the last of four jobs")
    return i, n


def fold_arg(text: str) -> int | str:
    """argparse ``type`` of a fold: ``all``, or a fold number (``0``, ``fold0``)."""
    try:
        return parse_fold(text)
    except AutosegError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold; e.g. -f 0 1 2 3 4, or -f all") from None
