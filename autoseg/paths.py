"""Where data lives: one root ($AUTOSEG_HOME, default ./autoseg_data) with raw/, preprocessed/, results/.

No global state: every function takes the root explicitly; commands resolve it once from
``--home`` or the environment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from autoseg.errors import fail

DATASET_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")
DEFAULT_RECIPE = "nnunet"   # autoseg.recipes: the recipe a plain autoseg-train uses
RECIPE_SEPARATOR = "__"


def run_folder_name(configuration: str, recipe: str | None = None) -> str:
    """The folder under ``results/DATASET/`` of one configuration trained with one recipe: ``RECIPE__CONFIG``,
    and for the default recipe (or None) the bare ``CONFIG``, where folds trained before recipes existed lie
    (they were trained with the default recipe), so those and their commands keep working unchanged."""
    if recipe is None or recipe == DEFAULT_RECIPE:
        return configuration
    return f"{recipe}{RECIPE_SEPARATOR}{configuration}"


def data_root(override: str | os.PathLike | None = None) -> Path:
    """The data root: ``override``, else $AUTOSEG_HOME, else ./autoseg_data."""
    return Path(override or os.environ.get("AUTOSEG_HOME") or "autoseg_data").expanduser()


@dataclass(frozen=True)
class DatasetPaths:
    """The three folders of one dataset, e.g. raw/Dataset001_BraTS."""

    root: Path
    name: str

    @property
    def raw(self) -> Path:
        return self.root / "raw" / self.name

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed" / self.name

    @property
    def results(self) -> Path:
        return self.root / "results" / self.name

    @property
    def dataset_json(self) -> Path:
        return self.raw / "dataset.json"

    @property
    def fingerprint_json(self) -> Path:
        return self.preprocessed / "fingerprint.json"

    @property
    def plans_json(self) -> Path:
        return self.preprocessed / "plans.json"

    @property
    def splits_json(self) -> Path:
        return self.preprocessed / "splits.json"

    def config_dir(self, configuration: str) -> Path:
        """Preprocessed cases of one configuration (``3d_fullres``, ``2d``, ...)."""
        return self.preprocessed / configuration

    def run_dir(self, configuration: str, recipe: str | None = None) -> Path:
        """Trained folds of one configuration and recipe (see :func:`run_folder_name`)."""
        return self.results / run_folder_name(configuration, recipe)

    def fold_dir(self, configuration: str, fold: int | str, recipe: str | None = None) -> Path:
        return self.run_dir(configuration, recipe) / (f"fold_{fold}" if str(fold) != "all" else "fold_all")

    def trained_configurations(self, recipe: str | None = None, checkpoint: str = "checkpoint_final.pt") -> list[str]:
        """The configurations with at least one fold holding ``checkpoint`` for ``recipe``, sorted (for messages
        that say which exist, and for the default of commands run without -c)."""
        found = {p.parent.parent.name for p in self.results.glob(f"*/fold_*/{checkpoint}")}
        return sorted(c for c in (name.rpartition(RECIPE_SEPARATOR)[2] for name in found)
                      if run_folder_name(c, recipe) in found)

    @property
    def dataset_id(self) -> int:
        return int(self.name[7:10])


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 0 <= dataset_id <= 999:
        raise fail(None, f"dataset id {dataset_id} is out of range", "use a number from 0 to 999 with -d")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise fail(None, f"dataset name {name!r} may only contain letters, digits, '_' and '-'", "choose another --name")
    return f"Dataset{dataset_id:03d}_{name}"


def list_datasets(root: Path) -> list[str]:
    """Dataset folder names found under raw/ (or preprocessed/ or results/ when raw/ is absent)."""
    names: set[str] = set()
    for sub in ("raw", "preprocessed", "results"):
        folder = root / sub
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if p.is_dir() and DATASET_RE.match(p.name))
    return sorted(names)


def resolve_dataset(root: str | os.PathLike, spec: str | int | None) -> DatasetPaths:
    """Find a dataset from ``-d``: a number (``1``, ``001``), a name (``BraTS``), a folder name, or nothing.

    Nothing is allowed when exactly one dataset exists under the root.
    """
    root = Path(root)
    names = list_datasets(root)
    if spec is None or spec == "":
        if len(names) == 1:
            return DatasetPaths(root, names[0])
        if not names:
            raise fail(root, "no dataset found under this data root",
                       "run autoseg-convert or autoseg-demo first, or point --home / AUTOSEG_HOME at your data")
        raise fail(root, f"{len(names)} datasets found ({', '.join(names)})", "choose one with -d NUMBER or -d NAME")
    spec = str(spec)
    if spec.isdigit():
        matches = [n for n in names if int(n[7:10]) == int(spec)]
    else:
        matches = [n for n in names if n == spec or DATASET_RE.match(n).group(2).lower() == spec.lower()]
    if len(matches) == 1:
        return DatasetPaths(root, matches[0])
    if not matches:
        known = ", ".join(names) or "none"
        raise fail(root, f"no dataset matches -d {spec} (known: {known})", "check the number or name, or the data root (--home)")
    raise fail(root, f"-d {spec} is ambiguous ({', '.join(matches)})", "give the full DatasetNNN_Name")
