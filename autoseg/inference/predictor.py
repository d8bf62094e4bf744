"""Predict new cases with trained folds: load once, then predict many (in-process deployment).

:class:`Predictor` holds the fold networks of one configuration; :meth:`Predictor.predict` turns one case's raw
channels into probabilities in the input's own grid (fold logits averaged, then sigmoid/softmax). The other jobs
of prediction live beside it: finding and reading input cases (:mod:`.inputs`), loading checkpoints
(:mod:`.models`), the files a prediction writes (:mod:`.predictions`) and autoseg-predict's loop over a folder
(:mod:`.folder`); their public names are importable from here too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg.context import stack_context
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.inference.folder import PredictionReport, predict_folder
from autoseg.inference.inputs import channel_indices, find_input_cases, read_input_case
from autoseg.inference.models import CHECKPOINTS, configuration_from_dict, load_folds
from autoseg.inference.predictions import (output_label_map, output_paths, save_probabilities,
                                           segmentation_from_probabilities)
from autoseg.inference.sliding_window import eval_mode, logits_to_probabilities, mirror_combinations, sliding_window_logits
from autoseg.inference.uncertainty import RunningVariance
from autoseg.input_forms import InputCase
from autoseg.io import Geometry
from autoseg.paths import DEFAULT_RECIPE, DatasetPaths
from autoseg.plans import ConfigurationPlan, Plans, default_configuration
from autoseg.precision import compute_dtype_for, resolve_device
from autoseg.preprocessing import preprocess_case, restore_probabilities
from autoseg.provenance import model_identity

__all__ = ["CHECKPOINTS", "InputCase", "PredictionReport", "Predictor", "channel_indices", "configuration_from_dict",
           "find_input_cases", "output_label_map", "output_paths", "predict_folder", "read_input_case",
           "save_probabilities", "segmentation_from_probabilities"]


@dataclass
class Predictor:
    """The fold networks of one configuration, loaded once; predicts raw cases (see module docstring)."""

    config: ConfigurationPlan
    info: DatasetInfo
    networks: list[nn.Module]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mirroring: bool = True
    step: float = 0.5
    batch_size: int = 1
    compute_dtype: torch.dtype | None = None
    compile: bool = False
    missing_channels: tuple[int, ...] = ()   # zero after normalisation: predict without these sequences
    _compiled: dict[int, nn.Module] = field(default_factory=dict, repr=False)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], device: str = "auto", precision: str = "auto",
                         expected_configuration: dict | None = None, dataset: str | None = None,
                         folds: Sequence[int | str] | None = None, recipe: str | None = None,
                         **options) -> Predictor:
        """Load checkpoints written by autoseg-train, checked as :func:`autoseg.inference.models.load_folds`
        says; ``options`` are the fields below ``device`` (mirroring, step, ...)."""
        dev = resolve_device(device)
        loaded = load_folds(paths, dev, expected_configuration, dataset, folds, recipe)
        return cls(loaded.config, loaded.info, loaded.networks, dev, compute_dtype=compute_dtype_for(precision, dev),
                   **options)

    @classmethod
    def from_results(cls, paths: DatasetPaths, configuration: str | None = None,
                     folds: Sequence[int | str] | None = None, checkpoint: str = "final", recipe: str | None = None,
                     **kwargs) -> Predictor:
        """Load the folds of ``results/DatasetX/CONFIG`` (``RECIPE__CONFIG`` for another ``recipe`` than the default);
        ``folds=None`` takes every trained cross-validation fold (``fold_all``, the model trained on every case,
        only when there is none). ``configuration=None``: the plan's default (:func:`autoseg.plans.default_configuration`)."""
        recipe = recipe or DEFAULT_RECIPE
        configuration = configuration or default_configuration(paths, recipe)
        run_dir = paths.run_dir(configuration, recipe)
        if checkpoint not in CHECKPOINTS:
            raise fail(None, f"--checkpoint {checkpoint!r} unknown", f"use one of {', '.join(CHECKPOINTS)}")
        name = f"checkpoint_{checkpoint}.pt"
        if paths.plans_json.is_file() and "expected_configuration" not in kwargs:   # refuse folds of an older plan
            planned = Plans.load(paths.plans_json).configurations.get(configuration)
            kwargs["expected_configuration"] = asdict(planned) if planned is not None else None
        if folds is None:
            found = sorted(p for p in run_dir.glob(f"fold_[0-9]*/{name}"))
            found = found or sorted(run_dir.glob(f"fold_all/{name}"))
            if not found:
                with_recipe = "" if recipe == DEFAULT_RECIPE else f" --recipe {recipe}"
                trained = paths.trained_configurations(recipe, name)
                have = f" (trained: {', '.join(trained)})" if trained else ""
                choose = f"choose one with -c {trained[0]}, or " if trained else ""
                raise fail(run_dir, f"no trained fold with {name}{have}",
                           f"{choose}train one first: autoseg-train {configuration} fold0{with_recipe}")
            folds = [p.parent.name.removeprefix("fold_") for p in found]
            return cls.from_checkpoints(found, dataset=paths.name, folds=folds, recipe=recipe, **kwargs)
        return cls.from_checkpoints([paths.fold_dir(configuration, f, recipe) / name for f in folds], dataset=paths.name,
                                    folds=folds, recipe=recipe, **kwargs)

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        return tuple(self.config.mirror_axes) if self.mirroring else ()

    @property
    def num_members(self) -> int:
        """Ensemble members: fold networks x mirrorings."""
        return len(self.networks) * len(mirror_combinations(self.mirror_axes))

    def identity(self) -> dict[str, Any]:
        """What its predictions depend on, for their provenance records: the fold weights, plan and dataset."""
        return model_identity(self.networks, asdict(self.config), self.info.to_dict())

    def logits(self, data: torch.Tensor, progress: bool = False, members: RunningVariance | None = None
               ) -> torch.Tensor:
        """Fold-averaged logits (num_outputs, *preprocessed shape) of a preprocessed case; ``members``, when
        given, receives every member's probabilities (the flips then run one after the other)."""
        total = None
        for i, net in enumerate(self.networks):
            with eval_mode(net):
                out = self._fold_logits(i, data, progress, members)
            total = out if total is None else total.add_(out)
        assert total is not None
        return total.div_(len(self.networks))

    def _fold_logits(self, i: int, data: torch.Tensor, progress: bool,
                     members: RunningVariance | None = None) -> torch.Tensor:
        def add_member(logits: torch.Tensor) -> None:
            assert members is not None
            members.add(logits_to_probabilities(logits, self.info.region_based))

        counted = members.count if members is not None else 0

        def run(net: nn.Module) -> torch.Tensor:
            return sliding_window_logits(net, data, self.config.patch_size, self.info.num_outputs, self.mirror_axes,
                                         self.step, self.batch_size, self.device, self.compute_dtype,
                                         progress=progress, member=None if members is None else add_member)
        if not self.compile:
            return run(self.networks[i])
        first = i not in self._compiled
        if first:
            self._compiled[i] = torch.compile(self.networks[i], dynamic=False)
        try:
            if not first:
                return run(self._compiled[i])
            # the first call compiles; freezing lets inductor pre-pack the conv weights for oneDNN
            import torch._inductor.config as inductor_config
            with inductor_config.patch(freezing=True):
                return run(self._compiled[i])
        except Exception as e:  # noqa: BLE001 - no compiler / unsupported op: eager is always correct
            if not first or (members is not None and members.count != counted):   # members would count twice
                raise
            print(f"autoseg: torch.compile unavailable ({type(e).__name__}); predicting without it", file=sys.stderr)
            self.compile = False
            return run(self.networks[i])

    def preprocess(self, images: list[np.ndarray], geometry: Geometry) -> tuple[np.ndarray, Any]:
        """The case as the networks see it: preprocessed, with ``missing_channels`` set to 0 (their mean), and
        for a 2.5D plan each slice stacked with its neighbours (:func:`autoseg.context.stack_context`)."""
        data, _, props = preprocess_case(images, geometry, self.config, self.info)
        for c in self.missing_channels:
            data[c] = 0
        return stack_context(data, self.config.network.context_slices), props

    def predict(self, images: list[np.ndarray], geometry: Geometry, progress: bool = False) -> np.ndarray:
        """Probabilities (num_outputs, *original zyx) float32 for raw channels in their own grid."""
        data, props = self.preprocess(images, geometry)
        probs = self.probabilities_preprocessed(torch.from_numpy(data), progress)
        background = None if self.info.region_based else 0
        return restore_probabilities(probs, props, background)

    def probabilities_preprocessed(self, data: torch.Tensor, progress: bool = False) -> np.ndarray:
        logits = self.logits(data, progress)
        return logits_to_probabilities(logits, self.info.region_based).float().cpu().numpy()

    def predict_with_variance(self, images: list[np.ndarray], geometry: Geometry, progress: bool = False
                              ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict`'s probabilities (up to float rounding) and the members' probability variance,
        averaged over the outputs, (z, y, x) float32, both in the input's grid (0 outside the crop)."""
        data, props = self.preprocess(images, geometry)
        members = RunningVariance()
        logits = self.logits(torch.from_numpy(data), progress, members)
        probs = logits_to_probabilities(logits, self.info.region_based).float().cpu().numpy()
        del logits
        variance = members.variance().mean(0, keepdim=True).cpu().numpy()
        del members
        background = None if self.info.region_based else 0
        return restore_probabilities(probs, props, background), restore_probabilities(variance, props)[0]
