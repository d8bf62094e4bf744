"""Deterministic cross-validation splits, saved once as ``preprocessed/DatasetX/splits.json`` and reused.

Folds follow nnU-Net: the sorted case ids are shuffled with a fixed seed and dealt into 5 folds
(``KFold(shuffle=True)``-like). With fewer than 5 cases there is one fold per case (leave one out);
a single case can only be trained as fold ``all``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import fail
from autoseg.io import read_json, write_json_atomic

N_FOLDS = 5
SPLIT_SEED = 12345


@dataclass(frozen=True)
class Split:
    """The training and validation case ids of one fold."""

    train: list[str]
    val: list[str]


def make_splits(case_ids: list[str], n_folds: int = N_FOLDS, seed: int = SPLIT_SEED) -> list[Split]:
    """``min(n_folds, len(case_ids))`` folds; each case is validated in exactly one fold."""
    ids = sorted(case_ids)
    k = min(n_folds, len(ids))
    if k < 2:
        return []
    order = np.random.default_rng(seed).permutation(len(ids))
    chunks = np.array_split(order, k)
    splits = []
    for chunk in chunks:
        val = sorted(ids[i] for i in chunk)
        splits.append(Split(train=[c for c in ids if c not in val], val=val))
    return splits


def load_or_create_splits(path: Path, case_ids: list[str], seed: int = SPLIT_SEED) -> list[Split]:
    """Reuse ``path`` when it exists (a user may have edited it), else create and save the default folds."""
    path = Path(path)
    if path.is_file():
        raw = read_json(path)
        try:
            splits = [Split(train=list(s["train"]), val=list(s["val"])) for s in raw]
        except (TypeError, KeyError):
            raise fail(path, "must be a list of {\"train\": [...], \"val\": [...]} objects",
                       "fix it, or delete it to regenerate the default 5 folds") from None
        unknown = sorted({c for s in splits for c in s.train + s.val} - set(case_ids))
        if unknown:
            raise fail(path, f"names case(s) not in the preprocessed data: {', '.join(unknown[:3])}",
                       "delete splits.json to regenerate it, or rerun autoseg-preprocess")
        return splits
    splits = make_splits(case_ids, seed=seed)
    write_json_atomic(path, [{"train": s.train, "val": s.val} for s in splits])
    return splits


def parse_fold(fold: int | str) -> int | str:
    """``fold3``, ``3`` or 3 -> 3; ``all`` -> ``"all"``; anything else is a one-line error."""
    text = str(fold).strip().lower()
    if text == "all":
        return "all"
    text = text.removeprefix("fold").removeprefix("_")
    if text.isdigit():
        return int(text)
    raise fail(None, f"fold {fold!r} is not valid", "use fold0..fold4, 0..4 or all")


def fold_cases(splits: list[Split], fold: int | str, case_ids: list[str], where: Path) -> Split:
    """The train/val cases of ``fold``; fold ``all`` trains and validates on every case (as nnU-Net does)."""
    if fold == "all":
        return Split(train=sorted(case_ids), val=sorted(case_ids))
    if not splits:
        raise fail(where, f"only {len(case_ids)} case(s): too few for cross-validation", "train fold all instead")
    if not 0 <= int(fold) < len(splits):
        raise fail(where, f"fold {fold} does not exist ({len(splits)} folds for {len(case_ids)} cases)",
                   f"choose a fold from 0 to {len(splits) - 1}, or all")
    return splits[int(fold)]
