"""Uncertainty of ensemble predictions: running variance, entropy maps, scores, the members a predictor runs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from autoseg.brats import dataset_json_for
from autoseg.dataset import DatasetInfo
from autoseg.inference.predictor import Predictor
from autoseg.inference.sliding_window import logits_to_probabilities, mirror_combinations, sliding_window_logits
from autoseg.inference.uncertainty import (RunningVariance, binary_entropy, case_scores, entropy_map,
                                           output_channels)
from autoseg.network import network_for_dataset
from test_predict import tiny_plan

BRATS = DatasetInfo.from_dict(dataset_json_for("brats2020", 1, "Synthetic"))
LABELS = DatasetInfo.from_dict({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
                                "numTraining": 1, "file_ending": ".nii.gz"})


@pytest.fixture
def one_thread():
    """Tiny networks run 50x faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_running_variance_matches_the_stacked_variance() -> None:
    xs = [torch.rand(3, 5, 6) for _ in range(7)]
    rv = RunningVariance()
    for x in xs:
        rv.add(x)
    stacked = torch.stack(xs)
    assert rv.count == 7
    torch.testing.assert_close(rv.mean, stacked.mean(0))
    torch.testing.assert_close(rv.variance(), stacked.var(0, unbiased=False))
    one = RunningVariance()
    one.add(xs[0])
    assert not one.variance().any()
    with pytest.raises(ValueError):
        RunningVariance().variance()


def test_entropy_maps_are_in_bits_and_scaled_to_one() -> None:
    np.testing.assert_allclose(binary_entropy(np.array([0.0, 0.5, 1.0, 0.25])), [0, 1, 0, 0.811278], atol=1e-6)
    regions = np.array([[0.5, 0.0], [0.5, 1.0], [0.5, 0.0]], np.float32)[:, :, None]   # 3 regions, 2 voxels
    np.testing.assert_allclose(entropy_map(regions, True)[:, 0], [1.0, 0.0])
    classes = np.array([[1 / 3, 1.0], [1 / 3, 0.0], [1 / 3, 0.0]], np.float32)[:, :, None]
    np.testing.assert_allclose(entropy_map(classes, False)[:, 0], [1.0, 0.0], atol=1e-6)


def test_scores_are_entropy_per_predicted_voxel() -> None:
    probs = np.zeros((3, 4, 4, 4), np.float32)
    probs[0, 0] = 1.0      # whole tumour certain in slice 0 (16 voxels) ...
    probs[0, 1, 0] = 0.5   # ... and uncertain on 4 voxels beside it
    probs[2, 3, 0, 0] = 0.5
    seg = BRATS.label_from_outputs(probs)
    scores, foreground = case_scores(probs, seg, entropy_map(probs, True), BRATS, {})
    assert scores["whole tumour"] == pytest.approx(4 / 16)
    assert scores["tumour core"] == 0.0
    assert scores["enhancing tumour"] == pytest.approx(1.0)   # nothing predicted: total entropy / 1
    assert foreground == pytest.approx((4 + 1) / 3 / 16)
    assert output_channels(BRATS) == {"whole tumour": 0, "tumour core": 1, "enhancing tumour": 2}
    assert output_channels(LABELS) == {"liver": 1, "tumour": 2}
    # a 2023-named input: the written enhancing value is 3, the model's is 4
    seg23 = np.where(seg == 4, 3, seg)
    assert case_scores(probs, seg23, entropy_map(probs, True), BRATS, {4: 3})[0] == scores


def _flip(t: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(t, [a + 1 for a in axes]) if axes else t


def test_predictor_variance_is_over_folds_and_mirrorings(one_thread) -> None:
    """Brute force: each member is one fold run on the mirrored volume and mirrored back (the windows of a
    24-voxel axis at patch 16 are symmetric, so this is the very pass the predictor makes)."""
    config = replace(tiny_plan(), patch_size=[16, 16, 16])
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(network_for_dataset(config.network, BRATS, deep_supervision=False).eval())
    predictor = Predictor(config, BRATS, nets)
    data = torch.randn(4, 24, 24, 24)
    rv = RunningVariance()
    mean = predictor.logits(data, members=rv)
    members = [_flip(sliding_window_logits(net, _flip(data, f), (16, 16, 16), 3), f)
               for net in nets for f in mirror_combinations(config.mirror_axes)]
    assert rv.count == predictor.num_members == len(members) == 16
    stacked = torch.stack(members)
    torch.testing.assert_close(mean, stacked.mean(0), atol=1e-5, rtol=1e-5)
    probs = logits_to_probabilities(stacked, True)
    torch.testing.assert_close(rv.variance(), probs.var(0, unbiased=False), atol=1e-6, rtol=1e-4)
    assert rv.variance().max() > 1e-4                                  # the members do disagree
    torch.testing.assert_close(mean, predictor.logits(data), atol=1e-6, rtol=1e-5)   # the flag-off result
