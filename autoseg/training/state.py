"""What a checkpoint holds for training, and how it is restored (see :mod:`autoseg.checkpoint`).

The data loader has no state of its own (batches are a function of seed, epoch and iteration), so
restoring the network, optimizer, GradScaler, torch RNG and the epoch count resumes exactly.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoseg.checkpoint import load_checkpoint
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.plans import ConfigurationPlan, NetworkPlan
from autoseg.recipes import Recipe
from autoseg.training.options import TrainOptions
from autoseg.training.progress import TrainingLog


def training_payload(network: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     plan: ConfigurationPlan, info: DatasetInfo, log: TrainingLog, options: TrainOptions,
                     fold: int | str, dataset_folder: str, recipe: Recipe | None = None,
                     network_plan: NetworkPlan | None = None) -> dict[str, Any]:
    """The checkpoint dict after ``log.epochs_done`` epochs (plain types and tensors only); ``dataset_folder``
    (``DatasetNNN_Name``) and ``fold`` say what it was trained for, checked wherever a fold folder is loaded.
    ``recipe`` (with the run's overrides) and ``network_plan`` (the plan's network as the recipe changed it)
    are what prediction rebuilds the network from."""
    recipe = recipe or options.effective_recipe()
    return {
        "recipe": recipe.to_dict(),
        "network": asdict(network_plan or plan.network),
        "configuration": asdict(plan),
        "dataset": info.to_dict(),
        "dataset_folder": dataset_folder,
        "network_state": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "epoch": log.epochs_done,
        "fold": str(fold),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": scaler.state_dict(),
        "sampler_state": {"seed": options.seed, "next_epoch": log.epochs_done},
        "rng_state": {"torch": torch.get_rng_state(),
                      "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "log": log.to_dict(),
        "options": options.to_dict(),
    }


def restore_training(ckpt: dict[str, Any], network: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, options: TrainOptions, where: Path) -> TrainingLog:
    """Load weights, optimizer, scaler and RNG from ``ckpt``; return its log. The seed must match (the recipe is
    checked by :func:`check_same_recipe` before)."""
    seed = ckpt.get("sampler_state", {}).get("seed")
    if seed != options.seed:
        raise fail(where, f"was trained with --seed {seed}, not {options.seed}",
                   f"resume with --seed {seed}, or delete the fold folder to start over")
    network.load_state_dict(ckpt["network_state"])
    optimizer.load_state_dict(ckpt["optimizer_state"])
    if ckpt["grad_scaler_state"]:  # empty when saved by a run without fp16 (CPU, bf16): keep the fresh scale
        scaler.load_state_dict(ckpt["grad_scaler_state"])
    torch.set_rng_state(ckpt["rng_state"]["torch"])
    if ckpt["rng_state"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng_state"]["cuda"])
    return TrainingLog.from_dict(ckpt["log"])


FLAGS = {"loss.dice": "--dice", "optimiser.lr": "--lr", "foreground.share": "--foreground",
         "foreground.mode": "--foreground-mode", "accumulation": "--accumulate"}   # recipe fields with an option


def check_same_recipe(trained: Recipe, wanted: Recipe, where: Path) -> None:
    """Refuse to resume a run with another recipe, or the same recipe changed; only its length may change."""
    if trained.name != wanted.name:
        raise fail(where, f"was trained with recipe {trained.name}, not {wanted.name}",
                   f"resume with --recipe {trained.name}, or delete the fold folder to start over")
    diffs = trained.differences(wanted)
    if diffs:
        key, old, new = diffs[0]
        flag = FLAGS.get(key)
        same = f"{flag} {old}" if flag else f"the recipe as it was ({key} {json.dumps(old)})"
        raise fail(where, f"was trained with {key} {json.dumps(old)}, not {json.dumps(new)} (recipe {trained.name})",
                   f"resume with {same}, or delete the fold folder to start over")


def load_pretrained(network: nn.Module, path: Path, heads: Collection[str]) -> None:
    """Copy weights from another autoseg checkpoint whose network has the same parameter shapes.

    The output layers ``heads`` (state_dict keys, :func:`autoseg.network.output_layers_for_dataset`) may
    differ (another dataset's regions): they keep their fresh initialisation.
    """
    ckpt = load_checkpoint(path)
    source = ckpt["network_state"]
    target = network.state_dict()
    missing = sorted(set(target) - set(source))
    if missing:
        raise fail(path, f"pretrained network lacks {len(missing)} parameter(s) of this plan's network (e.g. {missing[0]})",
                   "pretrain with the same network topology (same plans.json network section)")
    load = {}
    for k, v in target.items():
        if tuple(source[k].shape) == tuple(v.shape):
            load[k] = source[k]
        elif k not in heads:
            raise fail(path, f"pretrained weights do not match this network: {k} has shape "
                       f"{tuple(source[k].shape)}, expected {tuple(v.shape)}",
                       "pretrain with the same network topology, channels and outputs")
        else:
            load[k] = v
    network.load_state_dict(load)
