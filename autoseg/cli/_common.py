"""Arguments shared by the commands (data root, dataset, workers, shard)."""

from __future__ import annotations

import argparse

from autoseg.errors import fail
from autoseg.paths import DatasetPaths, data_root, resolve_dataset


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Help texts state their own defaults, so no automatic "(default: ...)" suffix."""
    return argparse.ArgumentParser(prog=prog, description=description)


def add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None,
                   help="data root holding raw/, preprocessed/, results/ (default: $AUTOSEG_HOME or ./autoseg_data)")


def add_dataset(p: argparse.ArgumentParser) -> None:
    add_home(p)
    p.add_argument("-d", "--dataset", default=None,
                   help="dataset number (1), name (BraTS) or folder (Dataset001_BraTS); optional when only one exists")


def dataset_paths(args: argparse.Namespace) -> DatasetPaths:
    return resolve_dataset(data_root(args.home), args.dataset)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``--shard i/n`` (0-based i) -> (i, n); None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise fail(None, f"--shard {text!r} is not of the form i/n", "e.g. --shard 0/4 for the first of four jobs") from None
    if n < 1 or not 0 <= i < n:
        raise fail(None, f"--shard {text}: need 0 <= i < n", "e.g. --shard 3/4 for the last of four jobs")
    return i, n
