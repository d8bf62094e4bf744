"""Trained folds loaded for prediction: checkpoints checked against the plan, dataset, fold and recipe they
belong to, each network rebuilt from its checkpoint and put on the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoseg.checkpoint import load_checkpoint
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.network import network_for_dataset
from autoseg.paths import run_folder_name
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan
from autoseg.recipes import recipe_of_checkpoint

CHECKPOINTS = ("final", "best", "latest")


def configuration_from_dict(d: dict) -> ConfigurationPlan:
    """ConfigurationPlan from the dict stored in a checkpoint."""
    d = dict(d)
    d["network"] = NetworkPlan.from_dict(d["network"])
    d["normalization"] = [ChannelNormalization(**n) for n in d["normalization"]]
    return ConfigurationPlan(**d)


@dataclass
class LoadedFolds:
    """The fold networks of one configuration, in eval mode on ``device``, with the plan and dataset they share."""

    config: ConfigurationPlan
    info: DatasetInfo
    networks: list[nn.Module]
    device: torch.device


def load_folds(paths: Sequence[str | Path], device: torch.device, expected_configuration: dict | None = None,
               dataset: str | None = None, folds: Sequence[int | str] | None = None,
               recipe: str | None = None) -> LoadedFolds:
    """Load checkpoints written by autoseg-train (all of one configuration and dataset); with
    ``expected_configuration`` (the current plan's), a checkpoint of another plan is refused, with
    ``dataset`` (``DatasetNNN_Name``) and ``folds`` (one per path) one trained for another dataset or fold, and
    with ``recipe`` (a name) one trained with another recipe. Each network is rebuilt from its checkpoint: the
    plan's network as its recipe changed it."""
    if not paths:
        raise fail(None, "no checkpoint given", "train a fold first or check -f")
    origin = [(dataset, f) for f in folds] if folds is not None else [(dataset, None)] * len(paths)
    first = load_checkpoint(paths[0], expected_configuration, dataset=origin[0][0], fold=origin[0][1])
    config, info = configuration_from_dict(first["configuration"]), DatasetInfo.from_dict(first["dataset"], paths[0])
    networks = []
    for i, path in enumerate(paths):
        ckpt = first if i == 0 else load_checkpoint(path, first["configuration"], dataset=origin[i][0],
                                                    fold=origin[i][1])
        trained_with = recipe_of_checkpoint(ckpt, path).name
        if recipe is not None and trained_with != recipe:
            raise fail(path, f"checkpoint was trained with recipe {trained_with}, but lies in the folder of recipe "
                       f"{recipe}", f"use --recipe {trained_with}, or move its fold folder to "
                       f"{run_folder_name(config.name, trained_with)}/")
        net_plan = NetworkPlan.from_dict(ckpt["network"]) if "network" in ckpt else config.network
        net = network_for_dataset(net_plan, info, deep_supervision=False)
        try:
            net.load_state_dict(ckpt["network_state"])
        except RuntimeError as e:
            raise fail(path, f"weights do not fit the network of its plan ({str(e).splitlines()[0][:80]})",
                       "use an untouched checkpoint written by autoseg-train") from None
        networks.append(net.to(device).eval())
    return LoadedFolds(config, info, networks, device)
