"""Tiny preprocessed datasets for the data/training tests (shared helper, not a test module)."""

from __future__ import annotations

import shutil
from pathlib import Path

from autoseg.paths import DatasetPaths
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan, Plans
from autoseg.synthetic import write_raw_dataset

NAME = "Dataset001_Synthetic"


def tiny_plan(batch_size: int = 2, batch_dice: bool = False, patch: tuple[int, ...] = (16, 16, 16),
              features: tuple[int, ...] = (4, 8, 16), mirror_axes: tuple[int, ...] = ()) -> ConfigurationPlan:
    n = len(features)
    k = [[3] * len(patch)] * n
    s = [[1] * len(patch)] + [[2] * len(patch)] * (n - 1)
    net = NetworkPlan("unet", list(features), k, s, [1] * n, [1] * (n - 1))
    name = "2d" if len(patch) == 2 else "3d_fullres"
    return ConfigurationPlan(name, [2.0, 2.0, 2.0], [20, 24, 24], list(patch), batch_size, net,
                             [ChannelNormalization("zscore", True)] * 4, 0.01, batch_dice=batch_dice,
                             mirror_axes=list(mirror_axes))


def build_home(root: Path, plans: list[ConfigurationPlan], n_cases: int = 5) -> DatasetPaths:
    """Raw synthetic cases (40x48x48 at 1 mm) preprocessed to 2 mm with the given configurations."""
    from autoseg.preprocessing import preprocess_dataset
    paths = DatasetPaths(root, NAME)
    write_raw_dataset(paths.raw, n_train=n_cases, n_test=0, shape=(40, 48, 48), seed=3)
    Plans(NAME, 8.0, "test", "RAS", 4, 3, True, {p.name: p for p in plans}).save(paths.plans_json)
    for p in plans:
        preprocess_dataset(paths, p.name, workers=1)
    return paths


def copy_home(src: DatasetPaths, dst_root: Path) -> DatasetPaths:
    shutil.copytree(src.root, dst_root)
    return DatasetPaths(dst_root, src.name)
