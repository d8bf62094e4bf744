"""Prediction with a cascade (``autoseg-predict -c 3d_cascade_fullres``): per case, the previous stage
(``3d_lowres``, every trained cross-validation fold ensembled, as ``autoseg-predict -c 3d_lowres`` would) and
then the cascade's folds, which see its segmentation as one-hot input channels (:mod:`autoseg.cascade`).

:func:`prior_from_probabilities` brings the previous stage's probabilities to the cascade's preprocessed grid;
training makes its cached segmentations with it too (:mod:`autoseg.training.cascade`), so a cascade sees the same
kind of input when it predicts as when it learnt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autoseg.cascade import prior_labels, with_prior
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.inference.predictor import Predictor
from autoseg.io import Geometry
from autoseg.paths import DEFAULT_RECIPE, DatasetPaths
from autoseg.plans import Plans


def prior_from_probabilities(probs: np.ndarray, shape: Sequence[int], info: DatasetInfo) -> np.ndarray:
    """The previous stage's label map (int8, ``shape``) from its probabilities (C, *its preprocessed shape): both
    preprocessed grids cover the same crop box (cropping precedes resampling), so the probabilities are resized
    linearly to ``shape``, then turned into labels as a prediction is (argmax, or regions painted in order)."""
    t = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))[None]
    if tuple(t.shape[2:]) != tuple(shape):
        mode = "trilinear" if len(shape) == 3 else "bilinear"
        t = F.interpolate(t, size=tuple(int(s) for s in shape), mode=mode, align_corners=False)
    return info.label_from_outputs(t[0].numpy()).astype(np.int8)


@dataclass
class CascadePredictor(Predictor):
    """A :class:`Predictor` of a cascade's folds whose input gains the ``previous`` stage's segmentation."""

    previous: Predictor | None = None

    @classmethod
    def joining(cls, cascade: Predictor, previous: Predictor) -> CascadePredictor:
        """The cascade's loaded folds (a plain :class:`Predictor`) fed by ``previous``."""
        return cls(**{f.name: getattr(cascade, f.name) for f in fields(Predictor)}, previous=previous)

    def identity(self) -> dict[str, Any]:
        """The cascade's folds and the previous stage's: a retrained lowres fold makes predictions stale too."""
        assert self.previous is not None
        return {**super().identity(), "previous_stage": self.previous.identity()}

    def preprocess(self, images: list[np.ndarray], geometry: Geometry) -> tuple[np.ndarray, Any]:
        """The cascade's input: its preprocessed channels, then the one-hot of the previous stage's prediction of the
        same case (missing channels missing for both)."""
        assert self.previous is not None
        data, props = super().preprocess(images, geometry)
        self.previous.missing_channels = self.missing_channels
        low, _ = self.previous.preprocess(images, geometry)
        probs = self.previous.probabilities_preprocessed(torch.from_numpy(low))
        prior = prior_from_probabilities(probs, data.shape[1:], self.info)
        return with_prior(data, prior, prior_labels(self.info)), props


def predictor_for(paths: DatasetPaths, configuration: str | None = None, folds: Sequence[int | str] | None = None,
                  checkpoint: str = "final", recipe: str | None = None, **options) -> Predictor:
    """The predictor of a configuration's trained folds (:meth:`Predictor.from_results`); for a cascade, a
    :class:`CascadePredictor` holding its previous stage's folds too (every trained cross-validation fold, whatever
    ``folds`` picks of the cascade's), refused in one line when that stage has none."""
    plan = None
    if configuration is not None and paths.plans_json.is_file():
        plan = Plans.load(paths.plans_json).configurations.get(configuration)
    if plan is None or plan.previous_stage is None:
        return Predictor.from_results(paths, configuration, folds, checkpoint, recipe, **options)
    stage = plan.previous_stage
    stage_dir = paths.run_dir(stage, recipe)
    if not any(stage_dir.glob(f"fold_[0-9]*/checkpoint_{checkpoint}.pt")):
        with_recipe = "" if (recipe or DEFAULT_RECIPE) == DEFAULT_RECIPE else f" --recipe {recipe}"
        raise fail(stage_dir, f"{configuration} predicts from the segmentation of {stage}, but no {stage} "
                   f"cross-validation fold has checkpoint_{checkpoint}.pt",
                   f"train them first: autoseg-train {stage} fold0{with_recipe} (and fold1..fold4)")
    cascade = Predictor.from_results(paths, configuration, folds, checkpoint, recipe, **options)
    previous = Predictor.from_results(paths, stage, None, checkpoint, recipe, **options)
    return CascadePredictor.joining(cascade, previous)


def held_out_predictor(paths: DatasetPaths, fold_dir: str | Path, fold: int, recipe: str | None = None,
                       device: str = "auto", precision: str = "auto", **options) -> Predictor:
    """The predictor of cross-validation fold ``fold`` (its ``checkpoint_final.pt`` in ``fold_dir``) for its held-out
    cases; for a cascade fold, with its previous stage's fold of the same number, which held out the same cases, so
    no model that saw a case predicts it (nnU-Net's rule for the cascade's validation)."""
    path = Path(fold_dir) / "checkpoint_final.pt"
    predictor = Predictor.from_checkpoints([path], device, precision, dataset=paths.name, folds=[fold], recipe=recipe,
                                           **options)
    stage = predictor.config.previous_stage
    if stage is None:
        return predictor
    previous = Predictor.from_checkpoints([paths.fold_dir(stage, fold, recipe) / path.name], device, precision,
                                          dataset=paths.name, folds=[fold], recipe=recipe, **options)
    return CascadePredictor.joining(predictor, previous)
