"""Fingerprint: statistics equal a direct numpy computation, deterministic, bounded sampling, canonical axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import autoseg.fingerprint as fingerprint_module
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError
from autoseg.fingerprint import Fingerprint, compute_fingerprint, sample_indices
from autoseg.io import Geometry, read_image, write_image
from autoseg.orientation import orientation_code
from autoseg.synthetic import write_raw_dataset

SHAPE = (16, 20, 24)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_raw_dataset(tmp_path_factory.mktemp("fp") / "Dataset001_Fp", n_train=4, shape=SHAPE, seed=1)


def _direct(raw: Path, case_id: str) -> tuple[list[np.ndarray], list[int], dict[str, int]]:
    """Foreground intensities per channel, nonzero crop shape and region volumes, computed plainly."""
    info = DatasetInfo.load(raw / "dataset.json")
    label, _ = read_image(raw / "labelsTr" / f"{case_id}.nii.gz")
    images = [read_image(raw / "imagesTr" / f"{case_id}_{c:04d}.nii.gz")[0] for c in range(4)]
    nonzero = np.argwhere(np.any(np.stack(images) != 0, axis=0))
    crop = (nonzero.max(0) - nonzero.min(0) + 1).tolist()
    volumes = {n: int(np.isin(label, r).sum()) for n, r in zip(info.foreground_names, info.regions)}
    return [im[label > 0] for im in images], crop, volumes


def test_statistics_equal_numpy_when_every_voxel_is_sampled(raw: Path) -> None:
    fp = compute_fingerprint(raw, voxels_per_case=10**9, workers=2)
    ids = [f"case_{i:03d}" for i in range(4)]
    assert fp.sampled_cases == ids and fp.num_training == 4 and fp.dataset_name == "Dataset001_Fp"
    direct = {cid: _direct(raw, cid) for cid in ids}
    for case in fp.cases:
        assert case.shape == list(SHAPE) and case.spacing == [1.0, 1.0, 1.0] and case.orientation == "LPS"
        assert case.shape_after_crop == direct[case.case_id][1]
        assert case.label_voxels == direct[case.case_id][2]
    for c, stats in enumerate(fp.intensity):
        values = np.concatenate([direct[cid][0][c] for cid in ids]).astype(np.float64)
        assert stats.mean == pytest.approx(values.mean(), rel=1e-9)
        assert stats.std == pytest.approx(values.std(), rel=1e-9)
        assert (stats.min, stats.max) == (values.min(), values.max())
        assert [stats.percentile_00_5, stats.median, stats.percentile_99_5] == \
            np.percentile(values, [0.5, 50, 99.5], method="inverted_cdf").tolist()
    assert fp.extra["sampling"]["foreground_voxels_per_channel"] == sum(len(direct[cid][0][0]) for cid in ids)


def test_deterministic_whatever_the_number_of_workers(raw: Path) -> None:
    one = compute_fingerprint(raw, voxels_per_case=50, workers=1, seed=5)
    two = compute_fingerprint(raw, voxels_per_case=50, workers=2, seed=5)
    assert one.to_dict() == two.to_dict()
    assert one.extra["sampling"]["foreground_voxels_per_channel"] == 4 * 50
    assert compute_fingerprint(raw, voxels_per_case=50, seed=6).intensity != one.intensity


def test_sampling_bounds_the_cases_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_raw_dataset(tmp_path / "Dataset002_Many", n_train=6, shape=SHAPE, seed=2)
    reads: list[Path] = []
    real_read = fingerprint_module.read_image

    def counting_read(path, *args, **kwargs):
        reads.append(Path(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(fingerprint_module, "read_image", counting_read)
    fp = compute_fingerprint(raw, max_cases=2, voxels_per_case=100, seed=3)
    assert len(fp.sampled_cases) == 2 and fp.sampled_cases == sorted(fp.sampled_cases)
    assert sorted({p.name.split(".")[0][:8] for p in reads}) == fp.sampled_cases
    assert len(reads) == 2 * 5  # label + 4 channels of each sampled case, each read once
    assert len(fp.cases) == 6 and all(c.shape == list(SHAPE) for c in fp.cases)
    full = [c.case_id for c in fp.cases if c.shape_after_crop is not None and c.label_voxels is not None]
    assert full == fp.sampled_cases and len(fp.shapes_after_crop) == 2
    assert compute_fingerprint(raw, max_cases=2, seed=3).sampled_cases == fp.sampled_cases

    fp.save(tmp_path / "fingerprint.json")
    assert Fingerprint.load(tmp_path / "fingerprint.json") == fp


def test_sampled_cases_count_as_many_voxels_as_they_stand_for(tmp_path: Path) -> None:
    raw = write_raw_dataset(tmp_path / "Dataset005_Weights", n_train=2, shape=SHAPE)
    for case, (voxels, value) in enumerate([(1000, 100.0), (100, 200.0)]):  # big tumour at 100, small at 200
        label, geometry = read_image(raw / "labelsTr" / f"case_{case:03d}.nii.gz")
        label = np.zeros_like(label)
        label.ravel()[:voxels] = 2
        write_image(raw / "labelsTr" / f"case_{case:03d}.nii.gz", label, geometry)
        for c in range(4):
            write_image(raw / "imagesTr" / f"case_{case:03d}_{c:04d}.nii.gz", np.full(label.shape, value, np.float32), geometry)
    stats = compute_fingerprint(raw, voxels_per_case=50).intensity[0]
    assert stats.mean == pytest.approx((1000 * 100 + 100 * 200) / 1100)   # not (100 + 200) / 2
    assert (stats.median, stats.percentile_00_5, stats.percentile_99_5) == (100.0, 100.0, 200.0)


def test_sample_indices_draws_distinct_foreground_voxels() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((7, 9, 11)) < 0.3
    idx = sample_indices(mask, 40, np.random.default_rng(1))
    assert len(idx) == 40 and len(np.unique(idx)) == 40 and np.all(np.diff(idx) > 0)
    assert mask.ravel()[idx].all()
    np.testing.assert_array_equal(sample_indices(mask, 10**6, rng), np.flatnonzero(mask))
    # every foreground voxel can be drawn: over many draws the sample covers the whole mask
    seen = np.unique(np.concatenate([sample_indices(mask, 40, np.random.default_rng(s)) for s in range(200)]))
    np.testing.assert_array_equal(seen, np.flatnonzero(mask))


def test_shapes_and_spacings_are_in_canonical_axes(tmp_path: Path) -> None:
    raw = write_raw_dataset(tmp_path / "Dataset003_Turned", n_train=1, shape=SHAPE, seed=4)
    # index x runs along physical z and index z along physical x (a transposed acquisition), anisotropic
    turned = Geometry((24, 20, 16), (2.0, 1.0, 3.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0))
    for path in [*(raw / "imagesTr").iterdir(), *(raw / "labelsTr").iterdir()]:
        write_image(path, read_image(path)[0], turned)
    crop = _direct(raw, "case_000")[1]
    case = compute_fingerprint(raw).cases[0]
    assert case.shape == [24, 20, 16] and case.spacing == [2.0, 1.0, 3.0]
    assert case.shape_after_crop == crop[::-1]
    assert case.orientation == orientation_code(turned.direction) != "LPS"


def test_no_foreground_in_the_sample_is_an_error(tmp_path: Path) -> None:
    raw = write_raw_dataset(tmp_path / "Dataset004_Empty", n_train=1, shape=SHAPE)
    label = raw / "labelsTr" / "case_000.nii.gz"
    array, geometry = read_image(label)
    write_image(label, np.zeros_like(array), geometry)
    with pytest.raises(AutosegError, match="labelsTr: no foreground voxel in the labels of the 1 sampled case"):
        compute_fingerprint(raw)
    with pytest.raises(AutosegError, match="must be at least 1"):
        compute_fingerprint(raw, max_cases=0)


@pytest.mark.brats
@pytest.mark.slow
def test_real_cases_sampled_statistics_are_close_to_exact(brats_dir: Path, tmp_path: Path) -> None:
    from autoseg.convert import convert_brats

    raw = convert_brats(brats_dir / "labelled", tmp_path / "home", 1, "BraTS").raw
    sampled = compute_fingerprint(raw)                          # 10 000 voxels per case
    exact = compute_fingerprint(raw, voxels_per_case=10**9)     # every tumour voxel
    assert sampled.sampled_cases == sorted(c.name for c in (brats_dir / "labelled").iterdir())
    for case in sampled.cases:
        assert case.shape == [155, 240, 240] and case.spacing == [1.0, 1.0, 1.0] and case.orientation == "LPS"
        label, _ = read_image(raw / "labelsTr" / f"{case.case_id}.nii.gz")
        assert case.label_voxels == {"whole tumour": int((label > 0).sum()), "tumour core": int(np.isin(label, [1, 4]).sum()),
                                     "enhancing tumour": int((label == 4).sum())}
        assert all(0 < a <= b for a, b in zip(case.shape_after_crop, case.shape))
    assert sampled.cases[2].label_voxels["enhancing tumour"] == 0  # TCGA-DU-7294 has no label 4
    for s, e in zip(sampled.intensity, exact.intensity):
        assert s.median == pytest.approx(e.median, rel=0.03) and s.mean == pytest.approx(e.mean, rel=0.03)
        assert s.percentile_99_5 == pytest.approx(e.percentile_99_5, rel=0.05)
