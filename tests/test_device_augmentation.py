"""--augment-on device: the batched augmentation (autoseg.data.device_augmentation) against the CPU path, on CPU tensors.

Same seed: the same sample up to float rounding. Independent seeds: the same statistics (mirroring and
spatial-transform shares, intensity distributions, label volumes of the nearest-neighbour resampling).
Through the loader and the training loop: the same batches and the same training run as with CPU augmentation.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from _training_fixtures import build_home, copy_home, tiny_plan  # noqa: E402

from autoseg import brats  # noqa: E402
from autoseg.checkpoint import load_checkpoint  # noqa: E402
from autoseg.cli.train import main as train_main  # noqa: E402
from autoseg.data.augmentation import (  # noqa: E402
    AugmentationParams,
    _gaussian_blur,
    augment,
    initial_patch_size,
    training_transforms,
)
from autoseg.data.device_augmentation import (  # noqa: E402
    DeviceAugmentedStream,
    DeviceAugmenter,
    gaussian_blur_rows,
    training_stream,
)
from autoseg.data.loader import BatchKey, BatchStream  # noqa: E402
from autoseg.dataset import DatasetInfo  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from autoseg.training import TrainOptions, train_fold  # noqa: E402
from autoseg.training.distributed import dist_from_env  # noqa: E402
from autoseg.training.trainer import batch_makers, load_fold_data  # noqa: E402

BRATS_INFO = DatasetInfo(channel_names={"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
                         labels=brats.labels_for("brats2023"), file_ending=".nii.gz", num_training=0,
                         regions_class_order=brats.regions_class_order_for("brats2023"))
LABEL_INFO = DatasetInfo(channel_names={"0": "MR", "1": "MR", "2": "MR", "3": "MR"},
                         labels={"background": 0, "a": 1, "b": 2, "c": 3}, file_ending=".nii.gz", num_training=0)


def _sample_input(patch: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An initial patch of 4 channels: a ramp along each axis, then noise, all zero outside an ellipsoid
    (the brain); labels 0..3 in blocks inside it, -1 outside."""
    initial = initial_patch_size(patch)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in initial], indexing="ij")
    brain = sum(g ** 2 for g in grid) < 0.8
    rng = np.random.default_rng(seed)
    noise = [rng.standard_normal(initial) + 1 for _ in range(4 - len(grid))]
    data = np.stack([*(g + 2 for g in grid), *noise]).astype(np.float32) * brain
    seg = ((grid[0] > 0).astype(int) + 2 * (grid[1] > 0.2)).astype(np.int8)
    seg[~brain] = -1
    return data, seg[None]


def _device(params: AugmentationParams, info: DatasetInfo, data: np.ndarray, seg: np.ndarray,
            seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(seeds)
    return DeviceAugmenter(params, info)(torch.from_numpy(data)[None].repeat(n, *[1] * data.ndim),
                                         torch.from_numpy(seg)[None].repeat(n, *[1] * seg.ndim), seeds)


@pytest.mark.parametrize("info", [BRATS_INFO, LABEL_INFO], ids=["regions", "labels"])
@pytest.mark.parametrize("patch,axes,dropout", [((12, 16, 10), (0, 1, 2), 0.3), ((20, 16), (0, 1), 0.0)],
                         ids=["3d", "2d"])
def test_same_seed_gives_the_cpu_paths_sample(info, patch, axes, dropout):
    params = AugmentationParams(patch, axes, masked_channels=(0, 1, 3), modality_dropout=dropout)
    data, seg = _sample_input(patch)
    seeds = list(range(120))   # every transform is drawn in some of them
    data_dev, target_dev = _device(params, info, data, seg, seeds)
    assert data_dev.shape == (len(seeds), 4, *patch) and data_dev.dtype == torch.float32
    assert target_dev.dtype == torch.uint8
    pipe = training_transforms(params)
    mismatched = 0
    for i, seed in enumerate(seeds):
        d, s = augment(pipe, data, seg, seed)
        target = info.targets_from_label(s[0])
        target = target if info.region_based else target[None]
        np.testing.assert_allclose(data_dev[i].numpy(), d, rtol=1e-4, atol=1e-4, err_msg=f"seed {seed}")
        mismatched += int((target_dev[i].numpy() != target).sum())
    # nearest-neighbour ties may round the other way at a few voxels, never more
    assert mismatched <= 1e-4 * target_dev.numel()


def test_statistics_match_the_cpu_path_over_independent_seeds():
    """Each path with its own seeds (the same draws are not shared): the shares and distributions agree."""
    patch, n = (12, 14, 16), 400
    params = AugmentationParams(patch, (0, 1, 2), masked_channels=(0, 1, 2, 3))
    data, seg = _sample_input(patch, seed=1)
    initial = np.asarray(data.shape[1:])
    window = tuple(slice((i - p) // 2, (i - p) // 2 + p) for i, p in zip(initial, patch))
    plain = seg[(0, *window)].clip(0)
    flips = [f for k in range(4) for f in itertools.combinations(range(3), k)]
    coords = [np.broadcast_to(np.arange(p).reshape([-1 if a == ax else 1 for a in range(3)]), patch).ravel()
              for ax, p in enumerate(patch)]

    def summary(d: np.ndarray, s: np.ndarray) -> dict[str, float]:
        """What a sample shows of its transforms: mirrored axes (ramp direction), whether it was resampled
        (its labels are no mirrored centre crop), intensity statistics and label volumes."""
        inside = s > 0
        out = {f"mirrored {ax}": float(np.corrcoef(d[ax].ravel(), coords[ax])[0, 1] < 0) for ax in range(3)}
        out["resampled"] = float(not any(np.array_equal(s, np.flip(plain, f)) for f in flips))
        out["noise mean"] = float(d[3][inside].mean())
        out["noise std"] = float(d[3][inside].std())
        out["ramp std"] = float(d[0][inside].std())
        out["label 2 share"] = float((s >= 2).mean())
        return out

    pipe = training_transforms(params)
    cpu = []
    for seed in range(n):
        d, s = augment(pipe, data, seg, seed)
        cpu.append(summary(d, s[0]))
    d_dev, t_dev = _device(params, LABEL_INFO, data, seg, list(range(n, 2 * n)))
    dev = [summary(d.numpy(), t[0].numpy()) for d, t in zip(d_dev, t_dev)]
    assert set(np.unique(t_dev.numpy())) <= {0, 1, 2, 3}   # nearest neighbour: only the input's labels
    for key in cpu[0]:
        a, b = np.array([r[key] for r in cpu]), np.array([r[key] for r in dev])
        if key.startswith("mirrored"):   # p 0.5 per axis
            assert abs(a.mean() - 0.5) < 4 * 0.5 / np.sqrt(n) and abs(b.mean() - 0.5) < 4 * 0.5 / np.sqrt(n), key
        elif key == "resampled":   # rotation (p 0.2) or scaling (p 0.2); a tiny angle may leave the labels as they were
            p = 1 - 0.8 * 0.8
            assert p - 0.1 < a.mean() <= p + 4 * np.sqrt(p * (1 - p) / n)
            assert abs(a.mean() - b.mean()) < 4 * np.sqrt(2 * p * (1 - p) / n), (a.mean(), b.mean())
        else:
            assert stats.ks_2samp(a, b).pvalue > 1e-3, (key, np.median(a), np.median(b))


def test_batched_blur_equals_the_per_channel_blur_also_on_short_axes():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((3, 9, 12, 10)).astype(np.float32))
    sigmas = [0.5, 0.8, 1.0]
    want = torch.stack([_gaussian_blur(row, s) for row, s in zip(x, sigmas)])
    torch.testing.assert_close(gaussian_blur_rows(x.clone(), sigmas), want, rtol=1e-5, atol=1e-6)
    short = x[:, :3]   # an axis shorter than the widest kernel's radius (4)
    want = torch.stack([_gaussian_blur(row, s) for row, s in zip(short, sigmas)])
    torch.testing.assert_close(gaussian_blur_rows(short.clone(), sigmas), want)


# ---- through the loader and the training loop ------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return build_home(tmp_path_factory.mktemp("devaug") / "home", [tiny_plan(batch_size=2, mirror_axes=(0, 1, 2))],
                      n_cases=3)


def test_the_loader_ships_initial_patches_and_the_device_makes_the_cpu_batches(prepared):
    makers = batch_makers(load_fold_data(prepared, "3d_fullres", "all"), TrainOptions(workers=0), dist_from_env())
    keys = [BatchKey("train", 0, i) for i in range(4)] + [BatchKey("val", 0, 0)]
    with BatchStream(makers, workers=0) as s:
        want = list(s.batches(keys))
    with training_stream(makers, 1, "device", torch.device("cpu")) as s:
        assert isinstance(s, DeviceAugmentedStream) and s.makers is makers
        got = list(s.batches(keys))
    raw = replace(makers["train"], defer_augmentation=True).batch(keys[0])   # what a worker ships
    assert raw.data.shape == (2, 4, *makers["train"].initial_patch_size) and raw.seeds.shape == (2,)
    assert raw.target.dtype == np.int8 and raw.target.min() == -1
    assert all(isinstance(g.data, torch.Tensor) for g in got[:-1]) and isinstance(got[-1].data, np.ndarray)  # val: as is
    for w, g in zip(want, got):
        np.testing.assert_allclose(np.asarray(g.data), w.data, rtol=1e-4, atol=1e-4)
        assert g.target.dtype == torch.uint8 if isinstance(g.target, torch.Tensor) else g.target.dtype == np.uint8
        assert (np.asarray(g.target) != w.target).mean() < 1e-3
    with pytest.raises(AutosegError, match="--augment-on 'gpu'"):
        training_stream(makers, 0, "gpu", torch.device("cpu"))


@pytest.mark.slow
def test_training_with_device_augmentation_follows_the_cpu_augmented_run(prepared, tmp_path, capsys):
    fast = dict(epochs=1, iters_per_epoch=3, val_iters=1, workers=0, progress=False, validate=False, device="cpu",
                precision="fp32")
    cpu = train_fold(copy_home(prepared, tmp_path / "cpu"), "3d_fullres", "all", TrainOptions(**fast))
    home = copy_home(prepared, tmp_path / "dev")
    with pytest.raises(SystemExit) as e:
        train_main(["3d_fullres", "all", "--home", str(home.root), "--epochs", "1", "--iters-per-epoch", "3",
                    "--val-iters", "1", "--workers", "1", "--device", "cpu", "--precision", "fp32", "--no-validation",
                    "--augment-on", "device"])
    assert e.value.code == 0
    dev = Path(capsys.readouterr().out.strip().rsplit(" in ", 1)[1])
    a, b = (load_checkpoint(f / "checkpoint_final.pt") for f in (cpu, dev))
    assert b["options"]["augment_on"] == "device"
    assert b["log"]["train_loss"] == pytest.approx(a["log"]["train_loss"], rel=1e-3)
    for k, v in a["network_state"].items():
        torch.testing.assert_close(b["network_state"][k], v, rtol=1e-3, atol=1e-5)
