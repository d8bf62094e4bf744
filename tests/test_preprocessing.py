"""Preprocessing: crop/normalise/resample, exact inversion to the original grid, the on-disk cases,
reruns, shards and the command's one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from autoseg import brats
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError
from autoseg.io import Geometry, read_image, write_image
from autoseg.orientation import reorientation_for
from autoseg.paths import resolve_dataset
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan, Plans
from autoseg.preprocessing import (list_preprocessed_cases, load_case, preprocess_case, preprocess_dataset,
                                   restore_label, restore_probabilities)
from autoseg.preprocessing.cropping import bbox_of
from autoseg.preprocessing.storage import case_files, foreground_locations
from autoseg.synthetic import make_case

INFO = DatasetInfo(brats.CHANNEL_NAMES, brats.labels_for("brats2020"), ".nii.gz", 1,
                   brats.regions_class_order_for("brats2020"))
# an oblique-free but non-trivial direction: index axes permuted and flipped relative to LPS
DIRECTION = (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def config(spacing: list[float], name: str = "3d_fullres", use_mask: bool = True, n: int = 4) -> ConfigurationPlan:
    net = NetworkPlan("unet", [8, 16], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [2, 2], [2])
    norm = [ChannelNormalization("zscore", use_mask=use_mask)] * n
    return ConfigurationPlan(name, spacing, [32, 32, 32], [32, 32, 32], 2, net, norm, 1.0)


def save_plans(home: Path, configs: dict[str, ConfigurationPlan]) -> None:
    paths = resolve_dataset(home, None)
    Plans(paths.name, 8.0, "test", "LPS", 4, 3, True, configs).save(paths.plans_json)


def oblique_case(seed: int = 1, spacing_xyz: tuple[float, float, float] = (0.9, 1.3, 1.1),
                 shape: tuple[int, int, int] = (22, 30, 26)):
    """Synthetic case with permuted/flipped axes, uneven spacing and an origin away from 0."""
    case = make_case(shape, seed=seed)
    geom = Geometry(tuple(reversed(case.label.shape)), spacing_xyz, (12.5, -40.0, 7.25), DIRECTION)
    return case.images, case.label, geom


def test_roundtrip_at_native_spacing_is_exact_through_nifti(tmp_path: Path) -> None:
    images, label, geom = oblique_case()
    reo = reorientation_for(geom)
    assert reo.perm != (0, 1, 2) and reo.flips
    spacing_canonical = list(reo.spacing_zyx(geom))
    data, seg, props = preprocess_case(images, geom, config(spacing_canonical), INFO, label)
    assert data.dtype == np.float32 and seg.dtype == np.int8 and not props.resampled
    assert data.shape[1:] == seg.shape == props.shape_after_crop
    assert props.shape_after_crop != props.shape_canonical          # the crop really removed background
    back = restore_label(seg, props)
    assert back.dtype == np.uint8
    write_image(tmp_path / "back.nii.gz", back, props.geometry)
    reread, g2 = read_image(tmp_path / "back.nii.gz")
    np.testing.assert_array_equal(reread, label)
    assert props.geometry == geom and geom.mismatch(g2) is None      # NIfTI stores float32 spacing
    probs = INFO.targets_from_label(seg).astype(np.float16)
    restored = restore_probabilities(probs, props)
    assert restored.dtype == np.float16 and restored.shape == (3, *label.shape)
    np.testing.assert_array_equal(restored, INFO.targets_from_label(label))


def test_roundtrip_resampled_keeps_geometry_and_label_values() -> None:
    images, label, geom = oblique_case(seed=2, shape=(40, 48, 44))
    data, seg, props = preprocess_case(images, geom, config([2.0, 2.0, 2.0]), INFO, label)
    assert props.resampled and data.shape[1:] == seg.shape == props.shape_after_resampling
    assert set(np.unique(seg)) <= set(np.unique(label))
    back = restore_label(seg, props)
    assert back.shape == label.shape and set(np.unique(back)) <= set(np.unique(label))
    wt, wt_back = label > 0, back > 0
    assert 2 * (wt & wt_back).sum() / (wt.sum() + wt_back.sum()) > 0.9
    probs = restore_probabilities(INFO.targets_from_label(seg).astype(np.float32), props)
    assert probs.shape == (3, *label.shape) and probs.dtype == np.float32
    assert 0 <= probs.min() and probs.max() <= 1 and ((probs[0] > 0.5) == wt_back).mean() > 0.97


def test_anisotropic_data_resamples_the_thick_axis_separately() -> None:
    images, label, _ = oblique_case(seed=3)
    geom = Geometry(tuple(reversed(label.shape)), (0.5, 0.5, 4.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    data, seg, props = preprocess_case(images, geom, config([4.0, 1.0, 1.0]), INFO, label)
    crop = props.shape_after_crop
    assert props.separate_axis == 0
    assert data.shape[1:] == (crop[0], round(crop[1] / 2), round(crop[2] / 2))   # slices kept, in-plane halved
    back = restore_label(seg, props)
    assert back.shape == label.shape and set(np.unique(back)) <= set(np.unique(label))


def test_zscore_inside_filled_mask_and_zero_outside() -> None:
    images, label, geom = oblique_case(seed=4)
    images = [im.copy() for im in images]
    images[0][11, 15, 13] = 0                      # a hole inside the brain in every channel
    for im in images[1:]:
        im[11, 15, 13] = 0
    data, _, props = preprocess_case(images, geom, config(list(reorientation_for(geom).spacing_zyx(geom))), INFO, label)
    inside = np.any(np.stack([props.reorientation.to_canonical(i) for i in images]) != 0, axis=0)
    box = tuple(slice(lo, hi) for lo, hi in props.bbox)
    mask = ndimage.binary_fill_holes(inside[box])
    assert mask.sum() > inside[box].sum()          # the hole is part of the normalisation mask
    for c in range(4):
        np.testing.assert_allclose(data[c][mask].mean(), 0, atol=1e-4)
        np.testing.assert_allclose(data[c][mask].std(), 1, atol=1e-3)
        assert np.all(data[c][~mask] == 0)
        assert props.intensity_stats[c][1] > 0


def test_ct_normalisation_clips_then_uses_plan_statistics() -> None:
    img = np.linspace(-2000, 3000, 8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    geom = Geometry((10, 9, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    info = DatasetInfo({"0": "CT"}, {"background": 0, "organ": 1}, ".nii.gz", 1)
    ct = ChannelNormalization("ct", lower=-1000.0, upper=1000.0, mean=100.0, std=50.0)
    cfg = ConfigurationPlan("3d_fullres", [1.0, 1.0, 1.0], [8, 9, 10], [8, 8, 8], 2,
                            config([1, 1, 1]).network, [ct], 1.0)
    data, seg, _ = preprocess_case([img], geom, cfg, info)
    assert seg is None
    expected = (np.clip(img, -1000, 1000) - 100) / 50
    np.testing.assert_allclose(data[0], expected[tuple(slice(lo, hi) for lo, hi in bbox_of(img != 0))], rtol=1e-5)


def test_annotation_outside_the_nonzero_box_is_kept() -> None:
    images, label, geom = oblique_case(seed=5)
    label = label.copy()
    label[0, 0, 0] = 2                             # a corner voxel where every channel is 0
    assert all(im[0, 0, 0] == 0 for im in images)
    reo = reorientation_for(geom)
    _, seg, props = preprocess_case(images, geom, config(list(reo.spacing_zyx(geom))), INFO, label)
    np.testing.assert_array_equal(restore_label(seg, props), label)
    _, _, unlabelled = preprocess_case(images, geom, config(list(reo.spacing_zyx(geom))), INFO)
    assert np.prod(unlabelled.shape_after_crop) < np.prod(props.shape_after_crop)


def test_bad_inputs_are_one_line_errors() -> None:
    images, label, geom = oblique_case()
    with pytest.raises(AutosegError, match="channel"):
        preprocess_case(images[:3], geom, config([1, 1, 1]), INFO, label)
    with pytest.raises(AutosegError, match="label has shape"):
        preprocess_case(images, geom, config([1, 1, 1]), INFO, label[1:])
    _, seg, props = preprocess_case(images, geom, config([1, 1, 1]), INFO, label)
    with pytest.raises(AutosegError, match="does not match the preprocessed shape"):
        restore_label(seg[1:], props)


def test_foreground_locations_capped_and_small_regions_whole() -> None:
    seg = np.zeros((30, 40, 50), dtype=np.int8)
    seg[2:28, 2:38, 2:48] = 2                      # large oedema
    seg[10:12, 10:12, 10:13] = 4                   # 12 voxels of enhancing tumour
    loc = foreground_locations(seg, INFO, "c1", max_locations=500)
    assert list(loc) == INFO.foreground_names
    assert len(loc["whole tumour"]) == 500 and len(loc["enhancing tumour"]) == 12
    assert np.all(seg[tuple(loc["whole tumour"].T)] > 0) and np.all(seg[tuple(loc["enhancing tumour"].T)] == 4)
    again = foreground_locations(seg, INFO, "c1", max_locations=500)
    np.testing.assert_array_equal(loc["whole tumour"], again["whole tumour"])   # deterministic per case


def test_preprocess_dataset_writes_loads_reruns_and_redoes_half_written(synthetic_home: Path) -> None:
    save_plans(synthetic_home, {"3d_fullres": config([1.0, 1.0, 1.0]), "2d": config([2.0, 2.0], "2d")})
    paths = resolve_dataset(synthetic_home, None)
    out = paths.config_dir("3d_fullres")
    done = preprocess_dataset(paths, "3d_fullres", workers=1)
    assert done == [f"case_{i:03d}" for i in range(6)] == list_preprocessed_cases(out)
    assert DatasetInfo.load(paths.preprocessed / "dataset.json") == DatasetInfo.load(paths.dataset_json)
    case = load_case(out, "case_002")
    assert isinstance(case.data, np.memmap) and case.data.dtype == np.float32 and case.seg.dtype == np.int8
    assert case.data.shape[1:] == case.seg.shape == case.props.shape_after_resampling
    assert set(case.fg_locations) == set(INFO.foreground_names)
    raw, _ = read_image(paths.raw / "labelsTr" / "case_002.nii.gz")
    np.testing.assert_array_equal(restore_label(np.asarray(case.seg), case.props), raw)

    assert preprocess_dataset(paths, "3d_fullres", workers=1) == []          # rerun skips
    with pytest.raises(AutosegError, match="case_999.json: case is not preprocessed.*run autoseg-preprocess"):
        load_case(out, "case_999")
    assert list_preprocessed_cases(paths.config_dir("3d_lowres")) == []
    case_files(out, "case_004")["props"].unlink()                              # killed before its marker
    (out / ".case_004_data.abc123xy.tmp.npy").write_bytes(b"partial")
    assert list_preprocessed_cases(out) == [f"case_{i:03d}" for i in (0, 1, 2, 3, 5)]
    assert preprocess_dataset(paths, "3d_fullres", workers=1) == ["case_004"]
    assert not list(out.glob(".*.tmp.*"))

    twod = preprocess_dataset(paths, "2d", workers=1, shard=(1, 2))
    assert twod == ["case_001", "case_003", "case_005"]
    c2 = load_case(paths.config_dir("2d"), "case_001")
    assert c2.props.target_spacing == (1.0, 2.0, 2.0) and c2.props.resampled
    assert not case_files(paths.config_dir("2d"), "case_001")["data"].samefile(case_files(out, "case_001")["data"])


def test_2d_at_the_3d_spacing_links_the_3d_files(synthetic_home: Path) -> None:
    save_plans(synthetic_home, {"3d_fullres": config([1.0, 1.0, 1.0]), "2d": config([1.0, 1.0], "2d")})
    paths = resolve_dataset(synthetic_home, None)
    preprocess_dataset(paths, "3d_fullres", workers=1, shard=(0, 3))
    assert preprocess_dataset(paths, "2d", workers=1) == [f"case_{i:03d}" for i in range(6)]
    d3, d2 = paths.config_dir("3d_fullres"), paths.config_dir("2d")
    for cid in ("case_000", "case_003"):                                   # linked, no second copy on disk
        assert all(case_files(d2, cid)[k].samefile(case_files(d3, cid)[k]) for k in ("data", "seg", "fg"))
    assert not case_files(d2, "case_001")["data"].samefile(case_files(d3, "case_000")["data"])
    a, b = load_case(d2, "case_003"), load_case(d3, "case_003")
    assert a.props == b.props and np.array_equal(a.data, b.data)
    assert preprocess_dataset(paths, "2d", workers=1) == []


@pytest.mark.slow
def test_shards_partition_cases_and_pool_matches_inline(synthetic_home: Path) -> None:
    save_plans(synthetic_home, {"3d_fullres": config([1.5, 1.5, 1.5])})
    paths = resolve_dataset(synthetic_home, None)
    parts = [preprocess_dataset(paths, "3d_fullres", workers=2 if i == 0 else 1, shard=(i, 3)) for i in range(3)]
    flat = [c for p in parts for c in p]
    assert sorted(flat) == [f"case_{i:03d}" for i in range(6)] and len(set(flat)) == 6
    pooled = load_case(paths.config_dir("3d_fullres"), "case_003", mmap=False)    # written by a pool worker
    images = [read_image(paths.raw / "imagesTr" / f"case_003_{c:04d}.nii.gz", np.float32)[0] for c in range(4)]
    label, geom = read_image(paths.raw / "labelsTr" / "case_003.nii.gz")
    data, seg, props = preprocess_case(images, geom, config([1.5, 1.5, 1.5]), INFO, label)
    np.testing.assert_array_equal(pooled.data, data)
    np.testing.assert_array_equal(pooled.seg, seg)
    assert pooled.props == props


def test_bad_cases_are_all_reported_and_the_others_finished(synthetic_home: Path) -> None:
    save_plans(synthetic_home, {"3d_fullres": config([1.0, 1.0, 1.0])})
    paths = resolve_dataset(synthetic_home, None)
    bad = [paths.raw / "imagesTr" / "case_001_0003.nii.gz", paths.raw / "labelsTr" / "case_004.nii.gz",
           paths.raw / "imagesTr" / "case_002_0001.nii.gz"]
    bad[0].write_bytes(b"<html>not found</html>")
    bad[1].unlink()
    image, geom = read_image(bad[2])
    write_image(bad[2], image, Geometry(geom.size, (2.0, 1.0, 1.0), geom.origin, geom.direction))
    with pytest.raises(AutosegError, match="3 problem") as e:
        preprocess_dataset(paths, "3d_fullres", workers=1)
    assert all(str(b) in str(e.value) for b in bad) and "spacing" in str(e.value)
    assert list_preprocessed_cases(paths.config_dir("3d_fullres")) == [f"case_{i:03d}" for i in (0, 3, 5)]


def test_plan_change_redoes_cases(synthetic_home: Path) -> None:
    paths = resolve_dataset(synthetic_home, None)
    save_plans(synthetic_home, {"3d_fullres": config([1.0, 1.0, 1.0])})
    assert len(preprocess_dataset(paths, "3d_fullres", workers=1, shard=(0, 3))) == 2
    save_plans(synthetic_home, {"3d_fullres": config([1.0, 1.0, 1.0], use_mask=False)})
    assert len(preprocess_dataset(paths, "3d_fullres", workers=1, shard=(0, 3))) == 2


def _cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """autoseg-preprocess in this process (a fresh interpreter per call cost 3 s of imports each)."""
    from autoseg.cli.preprocess import main
    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_cli_errors_are_one_line(synthetic_home: Path, capsys) -> None:
    home = str(synthetic_home)
    r = _cli(capsys, "--home", home)
    assert r.returncode == 2 and "plans.json: no plan found; run autoseg-plan" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    save_plans(synthetic_home, {"3d_fullres": config([1.0, 1.0, 1.0])})
    r = _cli(capsys, "--home", home, "-c", "3d_lowres")
    assert r.returncode == 2 and "'3d_lowres' is not in the plan" in r.stderr

    paths = resolve_dataset(synthetic_home, None)
    bad = paths.raw / "imagesTr" / "case_001_0002.nii.gz"
    bad.write_bytes(b"<html>not found</html>")                       # a failed download saved as the image
    r = _cli(capsys, "--home", home, "-np", "1", "--shard", "1/5")
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr

    blocked = paths.config_dir("3d_fullres")
    assert not any(blocked.iterdir())                               # the failed case left nothing behind
    blocked.rmdir()
    blocked.write_text("a file where the output folder should be")
    r = _cli(capsys, "--home", home, "--shard", "0/5")
    assert r.returncode == 2 and "cannot create the output folder" in r.stderr and str(blocked) in r.stderr


def test_cli_preprocesses_all_planned_configurations(synthetic_home: Path, capsys) -> None:
    save_plans(synthetic_home, {"3d_fullres": config([1.0, 1.0, 1.0]), "2d": config([1.0, 1.0], "2d")})
    r = _cli(capsys, "--home", str(synthetic_home), "-c", "all", "-np", "1", "--shard", "2/3")
    assert r.returncode == 0, r.stderr
    paths = resolve_dataset(synthetic_home, None)
    assert list_preprocessed_cases(paths.config_dir("2d")) == ["case_002", "case_005"]
    assert list_preprocessed_cases(paths.config_dir("3d_fullres")) == ["case_002", "case_005"]


# ---- real BraTS cases (skip when absent) ------------------------------------------------------------
def _brats_images(folder: Path, suffixes: tuple[str, ...], sep: str) -> tuple[list[np.ndarray], Geometry]:
    reads = [read_image(folder / f"{folder.name}{sep}{s}.nii.gz", np.float32) for s in suffixes]
    return [r[0] for r in reads], reads[0][1]


@pytest.mark.slow
def test_real_ras_case_roundtrip(brats_dir: Path) -> None:
    folder = brats_dir / "unlabelled" / "BraTS-MET-00110-000"
    images, geom = _brats_images(folder, ("t1n", "t1c", "t2w", "t2f"), "-")
    label = (images[3] > np.percentile(images[3][images[3] > 0], 90)).astype(np.uint8)   # bright FLAIR as a label
    data, seg, props = preprocess_case(images, geom, config([1.0, 1.0, 1.0]), INFO, label)
    assert props.flips and not props.resampled                          # RAS really was reoriented
    np.testing.assert_array_equal(restore_label(seg, props), label)
    assert props.geometry == geom
    nonzero = (images[1] != 0).astype(np.float16)[None]
    back = restore_probabilities(props.reorientation.to_canonical(nonzero)[(slice(None),) + tuple(
        slice(lo, hi) for lo, hi in props.bbox)], props)
    np.testing.assert_array_equal(back, nonzero)


def test_real_lps_labelled_case_roundtrip(brats_dir: Path) -> None:
    folder = brats_dir / "labelled" / "BraTS19_CBICA_ASK_1"
    images, geom = _brats_images(folder, ("t1", "t1ce", "t2", "flair"), "_")
    label, _ = read_image(folder / f"{folder.name}_seg.nii.gz")
    data, seg, props = preprocess_case(images, geom, config([1.0, 1.0, 1.0]), INFO, label)
    assert not props.flips and props.perm == (0, 1, 2)
    assert np.prod(data.shape[1:]) < 0.5 * label.size                  # the crop removes most of the volume
    back = restore_label(seg, props)
    np.testing.assert_array_equal(back, label)
    assert set(np.unique(seg)) == {0, 1, 2, 4}
    fg = foreground_locations(seg, INFO, folder.name)
    assert all(0 < len(v) <= 10_000 for v in fg.values())


@pytest.mark.slow
def test_real_2023_float_case_keeps_label_3(brats_dir: Path) -> None:
    folder = brats_dir / "labelled-2023" / "BraTS-GLI-pr138-000"
    images, geom = _brats_images(folder, ("t1n", "t1c", "t2w", "t2f"), "-")
    label, _ = read_image(folder / f"{folder.name}-seg.nii.gz")
    info = DatasetInfo(brats.CHANNEL_NAMES, brats.labels_for("brats2023"), ".nii.gz", 1,
                       brats.regions_class_order_for("brats2023"))
    data, seg, props = preprocess_case(images, geom, config([1.0, 1.0, 1.0]), info, label)
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(restore_label(seg, props), label)
    assert len(foreground_locations(seg, info, folder.name)["enhancing tumour"]) > 0
