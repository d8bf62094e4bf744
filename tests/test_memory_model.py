"""The analytic memory model against what a training step really holds (counted on CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from autoseg.network import build_network, count_parameters as built_parameters
from autoseg.network.memory import (
    count_parameters,
    estimate_training_memory,
    estimate_training_memory_bytes,
    stage_shapes,
)
from autoseg.plans import NetworkPlan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from memory_calibrate import measure_training_step  # noqa: E402  (a benchmark tool, not part of the package)


def net(arch, features, kernels, strides, enc, dec) -> NetworkPlan:
    return NetworkPlan(arch, features, kernels, strides, enc, dec)


# (name, plan, patch, batch); the planner's shapes in miniature: isotropic, anisotropic, residual, 2d
CALIBRATION = [
    ("unet3d", net("unet", [8, 16, 32], [[3, 3, 3]] * 3, [[1, 1, 1]] + [[2, 2, 2]] * 2, [2] * 3, [2] * 2),
     [16, 16, 16], 2),
    ("unet3d_aniso", net("unet", [8, 16, 32], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                         [2] * 3, [2] * 2), [8, 16, 24], 2),
    ("resenc3d", net("resenc_unet", [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1]] + [[2, 2, 2]] * 2, [1, 3, 4], [1] * 2),
     [16, 16, 16], 2),
    ("unet2d", net("unet", [8, 16, 32], [[3, 3]] * 3, [[1, 1]] + [[2, 2]] * 2, [2] * 3, [2] * 2), [32, 32], 4),
]


@pytest.mark.parametrize("name,plan,patch,batch", CALIBRATION, ids=[c[0] for c in CALIBRATION])
@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "mixed"])
def test_estimate_within_25_percent_of_measured(name, plan, patch, batch, mixed):
    measured = measure_training_step(plan, patch, batch, 4, 3, mixed)
    est = estimate_training_memory(plan, patch, batch, 4, 3, mixed)
    assert abs(est.total / measured.peak_bytes - 1) < 0.25, (est, measured)
    assert abs(est.activations / measured.saved_activation_bytes - 1) < 0.25, (est, measured)


@pytest.mark.parametrize("plan", [c[1] for c in CALIBRATION], ids=[c[0] for c in CALIBRATION])
def test_parameter_count_matches_built_network(plan):
    assert count_parameters(plan, 4, 3) == built_parameters(build_network(plan, 4, 3))


def test_default_brats_plan_estimate():
    """The plan nnU-Net uses at 8 GB (measured there at 7.7 GB on the GPU, all overheads included)."""
    plan = net("unet", [32, 64, 128, 256, 320, 320], [[3, 3, 3]] * 6, [[1, 1, 1]] + [[2, 2, 2]] * 5, [2] * 6, [2] * 5)
    assert count_parameters(plan, 4, 3) == 31_198_991
    gib = estimate_training_memory_bytes(plan, [128] * 3, 2, 4, 3, mixed_precision=True) / 2 ** 30
    assert 3.5 < gib < 7.7


def test_memory_grows_with_patch_batch_and_precision():
    plan = CALIBRATION[0][1]
    base = estimate_training_memory_bytes(plan, [32, 32, 32], 2, 4, 3, True)
    assert estimate_training_memory_bytes(plan, [64, 32, 32], 2, 4, 3, True) > base
    assert estimate_training_memory_bytes(plan, [32, 32, 32], 3, 4, 3, True) > base
    assert estimate_training_memory_bytes(plan, [32, 32, 32], 2, 4, 3, False) > base


def test_stage_shapes():
    assert stage_shapes([16, 32, 48], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]) == [[16, 32, 48], [16, 16, 24], [8, 8, 12]]
