"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)`` so a file can never
run code, and checked against the plan they were trained with.

A checkpoint is a dict of plain types and tensors:
``format``, ``configuration`` (its ConfigurationPlan as a dict), ``dataset`` (dataset.json as a dict),
``dataset_folder`` (``DatasetNNN_Name``) and ``fold`` it was trained for, ``plan_hash``, ``network_state``,
``epoch``, and for training state ``optimizer_state``, ``grad_scaler_state``, ``sampler_state``, ``log``
(per-epoch metrics). Inference needs only the first ones.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from autoseg.errors import fail
from autoseg.io import atomic_path
from autoseg.plans import LEGACY_REGION_HEAD

FORMAT = "autoseg-checkpoint-1"


def plan_hash(configuration: dict[str, Any]) -> str:
    """Stable hash of what makes weights compatible: network topology, channels, patch and spacing."""
    keys = ("network", "spacing", "patch_size", "normalization")
    selected = {k: configuration.get(k) for k in keys}
    network = selected["network"]
    if isinstance(network, dict) and network.get("region_head") == LEGACY_REGION_HEAD:
        # a legacy plan read with its default filled in hashes as it did when saved without the field
        selected["network"] = {k: v for k, v in network.items() if k != "region_head"}
    if isinstance(selected["network"], dict):
        # no 2.5D context and no cascade prior hash as they did before the fields existed
        selected["network"] = {k: v for k, v in selected["network"].items()
                               if not (k in ("context_slices", "prior_channels") and v == 0)}
    blob = json.dumps(selected, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically; ``payload`` must hold ``configuration`` and ``network_state``."""
    payload = {"format": FORMAT, "plan_hash": plan_hash(payload["configuration"]), **payload}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, expected_configuration: dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu", dataset: str | None = None,
                    fold: int | str | None = None) -> dict[str, Any]:
    """Load without executing code; refuse tampered, foreign or other-plan checkpoints with one line.

    With ``dataset`` (``DatasetNNN_Name``) and ``fold``, the fold folder it is loaded from: refuse one that was
    trained for another dataset or fold (see :func:`check_origin`).
    """
    path = Path(path)
    if not path.is_file():
        raise fail(path, "checkpoint not found", "train this fold first (autoseg-train) or check -f/-c")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise fail(path, "refused: the checkpoint holds objects other than tensors and plain data (tampered or not "
                   "an autoseg checkpoint)", "use a checkpoint written by autoseg-train") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:   # OSError: EINVAL when cut short
        detail = (e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0])[:100]
        raise fail(path, f"checkpoint is truncated or corrupt ({detail})",
                   "delete it and resume from checkpoint_latest.pt or retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise fail(path, "not an autoseg checkpoint", "use a checkpoint written by autoseg-train")
    if ckpt.get("plan_hash") != plan_hash(ckpt.get("configuration", {})):
        raise fail(path, "checkpoint metadata was modified after saving (plan hash mismatch)", "use an untouched checkpoint")
    if expected_configuration is not None and ckpt["plan_hash"] != plan_hash(expected_configuration):
        raise fail(path, "checkpoint was trained with another plan (network, patch, spacing or normalisation differ)",
                   "retrain with the current plan, or restore the plans.json it was trained with")
    check_origin(ckpt, path, dataset, fold)
    return ckpt


def check_origin(ckpt: dict[str, Any], path: Path, dataset: str | None, fold: int | str | None) -> None:
    """Refuse a checkpoint in the fold folder of ``dataset`` / ``fold`` that was trained for another one.

    Such a file was copied there (a results folder reused for a new dataset with the same plan, a fold
    copied into another's folder): its plan matches, so nothing else would notice, and resuming it or
    predicting with it would silently use the wrong data's model. Checkpoints from before these fields
    were stored carry no ``dataset_folder`` and are not compared.
    """
    trained_on = ckpt.get("dataset_folder")
    if dataset is not None and trained_on is not None and trained_on != dataset:
        raise fail(path, f"checkpoint was trained on dataset {trained_on}, not on {dataset} whose fold folder "
                   "holds it", f"use it with -d {trained_on}; for {dataset}, delete this fold folder and train it")
    trained_fold = ckpt.get("fold")
    if fold is not None and trained_fold is not None and str(trained_fold) != str(fold):
        raise fail(path, f"checkpoint was trained as fold {trained_fold}, but lies in the folder of fold {fold}",
                   f"move it back to fold_{trained_fold}/, or delete this fold folder and train fold {fold}")
