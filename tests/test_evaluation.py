"""Metrics against medpy, MONAI and brute-force reference implementations (test-only), the BraTS empty-mask
convention, lesion-wise metrics and NSD, folder evaluation."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from medpy.metric import binary as mp
from scipy import ndimage
from scipy.spatial import cKDTree

from autoseg.brats import dataset_json_for, find_brats_case
from autoseg.cli.evaluate import main as evaluate_main
from autoseg.dataset import DatasetInfo
from autoseg.evaluation.evaluate import evaluate_folder
from autoseg.evaluation.lesions import LESION_HD95_PENALTY, LesionSettings, lesion_wise
from autoseg.evaluation.metrics import EMPTY_HD95, case_metrics, evaluated_masks, hd95, mask_metrics, nsd
from autoseg.io import read_image, write_image
from autoseg.postprocessing import PostprocessingPlan
from autoseg.synthetic import write_brats_folders

BRATS_INFO = DatasetInfo.from_dict(dataset_json_for("brats2020", 1, "x"))


def _blob(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def _medpy(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    return {"dice": mp.dc(pred, ref), "hd95": mp.hd95(pred, ref, voxelspacing=spacing),
            "sensitivity": mp.sensitivity(pred, ref), "specificity": mp.specificity(pred, ref)}


def _assert_matches_medpy(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> None:
    ours, theirs = mask_metrics(pred, ref, spacing), _medpy(pred, ref, spacing)
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, rel=1e-9, abs=1e-9), k


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 1.1)])
def test_synthetic_blobs_match_medpy(spacing: tuple[float, ...]) -> None:
    ref = _blob((40, 50, 45), (20, 25, 20), (8, 12, 10))
    pred = _blob((40, 50, 45), (22, 24, 23), (7, 13, 9)) | _blob((40, 50, 45), (5, 5, 5), (2, 2, 2))
    _assert_matches_medpy(pred, ref, spacing)


def test_masks_touching_the_image_border_match_medpy() -> None:
    ref = np.zeros((20, 20, 20), bool)
    ref[:10, :, 3:9] = True
    pred = np.zeros_like(ref)
    pred[:12, 2:, 5:12] = True
    _assert_matches_medpy(pred, ref, (1.0, 2.0, 1.5))


def test_brats_empty_convention() -> None:
    empty = np.zeros((10, 10, 10), bool)
    one = empty.copy()
    one[4:6, 4:6, 4:6] = True
    both = mask_metrics(empty, empty, (1, 1, 1))
    assert (both["dice"], both["hd95"], both["sensitivity"], both["specificity"]) == (1.0, 0.0, 1.0, 1.0)
    for pred, ref in ((one, empty), (empty, one)):
        m = mask_metrics(pred, ref, (1, 1, 1))
        assert m["dice"] == 0.0 and m["hd95"] == EMPTY_HD95 and m["sensitivity"] == 0.0
    assert hd95(one, one, (1, 1, 1)) == 0.0


def test_regions_and_labels_are_evaluated() -> None:
    assert evaluated_masks(BRATS_INFO) == {"whole tumour": (1, 2, 4), "tumour core": (1, 4),
                                           "enhancing tumour": (4,), "label 1": (1,), "label 2": (2,)}
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 2
    ref[3:5, 3:5, 3:5] = 4
    pred = ref.copy()
    pred[ref == 4] = 1  # enhancing called necrosis: WT and TC perfect, ET and labels 1 missed
    m = case_metrics(pred, ref, BRATS_INFO, (1, 1, 1))
    assert m["whole tumour"]["dice"] == 1 and m["tumour core"]["dice"] == 1
    assert m["enhancing tumour"]["dice"] == 0 and m["enhancing tumour"]["hd95"] == EMPTY_HD95
    assert m["label 2"]["dice"] == 1 and m["label 1"]["dice"] == 0


@pytest.mark.brats
def test_real_brats_label_vs_perturbed_matches_medpy(brats_dir) -> None:
    case = find_brats_case(brats_dir / "labelled" / "BraTS19_CBICA_ASK_1")
    ref, geom = read_image(case.label)
    # medpy is slow on the full 240x240x155 grid: both sides see the tumour's box plus a margin
    z, y, x = (np.flatnonzero(ref.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    ref = ref[max(z[0] - 8, 0):z[-1] + 9, max(y[0] - 8, 0):y[-1] + 9, max(x[0] - 8, 0):x[-1] + 9]
    rng = np.random.default_rng(0)
    for values in ((1, 2, 4), (4,)):
        r = np.isin(ref, values)
        p = ndimage.binary_dilation(r, iterations=2) & (rng.random(r.shape) > 0.05)
        p = np.roll(p, 3, axis=1)
        _assert_matches_medpy(p, r, geom.spacing_zyx)


# ---------------------------------------------------------------- NSD and lesion-wise metrics

def _nsd_brute_force(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tolerance: float) -> float:
    """NSD from explicit point sets: surface voxels (mask minus its 6-neighbour erosion) in mm, nearest
    neighbours from a k-d tree."""
    def points(mask: np.ndarray) -> np.ndarray:
        edge = mask & ~ndimage.binary_erosion(mask)
        return np.argwhere(edge) * np.asarray(spacing)
    sp, sr = points(pred), points(ref)
    d_pr, d_rp = cKDTree(sr).query(sp)[0], cKDTree(sp).query(sr)[0]
    return (np.sum(d_pr <= tolerance) + np.sum(d_rp <= tolerance)) / (len(sp) + len(sr))


@pytest.mark.parametrize("spacing,tolerance", [((1.0, 1.0, 1.0), 1.0), ((1.0, 1.0, 1.0), 0.0),
                                               ((2.0, 1.0, 1.25), 2.0)])
def test_nsd_matches_a_point_set_computation(spacing: tuple[float, ...], tolerance: float) -> None:
    ref = _blob((40, 50, 45), (20, 25, 20), (8, 12, 10))
    pred = _blob((40, 50, 45), (21, 24, 23), (7, 13, 9)) | _blob((40, 50, 45), (5, 5, 5), (2, 2, 2))
    ours = nsd(pred, ref, spacing, tolerance)
    assert ours == pytest.approx(_nsd_brute_force(pred, ref, spacing, tolerance), abs=1e-12)
    assert 0.0 < ours < 1.0
    assert mask_metrics(pred, ref, spacing, tolerance)["nsd"] == ours
    assert nsd(ref, ref, spacing, 0.0) == 1.0


def test_nsd_empty_convention() -> None:
    empty = np.zeros((10, 10, 10), bool)
    one = empty.copy()
    one[4:6, 4:6, 4:6] = True
    assert nsd(empty, empty, (1, 1, 1), 1.0) == 1.0
    assert nsd(one, empty, (1, 1, 1), 1.0) == 0.0 and nsd(empty, one, (1, 1, 1), 1.0) == 0.0
    assert "nsd" not in mask_metrics(one, one, (1, 1, 1))       # only when asked for


def _lesion_wise_brute_force(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...],
                             settings: LesionSettings = LesionSettings()) -> dict[str, float]:
    """The BraTS 2023 definition computed another way: skimage's 26-connected components, reference components
    merged pairwise when their dilations overlap or touch (union-find), every dilation on the whole image, medpy's
    Dice and HD95 per lesion."""
    from skimage.measure import label as sk_label
    def dilate(mask: np.ndarray) -> np.ndarray:   # no dilation at 0 (scipy would dilate until nothing changes)
        struct = ndimage.generate_binary_structure(3, 2)
        return ndimage.binary_dilation(mask, struct, iterations=settings.dilation) if settings.dilation else mask

    ref_cc, pred_cc = sk_label(ref, connectivity=3), sk_label(pred, connectivity=3)
    parts = [ref_cc == i for i in range(1, ref_cc.max() + 1)]
    grown = [dilate(c) for c in parts]
    group = list(range(len(parts)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i in range(len(parts)):
        touching = ndimage.binary_dilation(grown[i], np.ones((3, 3, 3), bool))
        for j in range(i + 1, len(parts)):
            if (touching & grown[j]).any():
                group[root(j)] = root(i)
    lesions = [np.any([parts[i] for i in range(len(parts)) if root(i) == r], axis=0)
               for r in sorted({root(i) for i in range(len(parts))})]
    matched_any: set[int] = set()
    dice, dist, counts = [], [], {"lesion_tp": 0, "lesion_fn": 0}
    for lesion in lesions:
        matched = set(np.unique(pred_cc[dilate(lesion)]).tolist()) - {0}
        matched_any |= matched
        if lesion.sum() * math.prod(spacing) <= settings.min_volume_mm3:
            continue
        if matched:
            seg = np.isin(pred_cc, sorted(matched))
            dice.append(mp.dc(seg, lesion))
            dist.append(mp.hd95(seg, lesion, voxelspacing=spacing))
            counts["lesion_tp"] += 1
        else:
            dice.append(0.0)
            dist.append(374.0)
            counts["lesion_fn"] += 1
    fp = len(set(range(1, pred_cc.max() + 1)) - matched_any)
    n = len(dice) + fp
    if n == 0:
        return {"lesion_dice": 1.0, "lesion_hd95": 0.0, **counts, "lesion_fp": 0}
    return {"lesion_dice": sum(dice) / n, "lesion_hd95": (sum(dist) + 374.0 * fp) / n, **counts, "lesion_fp": fp}


def _cube(mask: np.ndarray, corner: tuple[int, ...], size: int) -> None:
    mask[tuple(slice(c, c + size) for c in corner)] = True


def test_lesion_wise_matching_misses_false_positives_and_small_lesions() -> None:
    ref, pred = np.zeros((40, 40, 60), bool), np.zeros((40, 40, 60), bool)
    _cube(ref, (5, 5, 5), 8)                   # lesion A (512 voxels) ...
    _cube(ref, (5, 5, 16), 2)                  # ... and a speck 4 voxels away: merged into A by the dilations
    _cube(ref, (25, 25, 5), 6)                 # lesion B (216), missed
    _cube(ref, (25, 5, 40), 3)                 # lesion C (27 <= 50): not scored ...
    _cube(pred, (25, 5, 44), 2)                # ... nor is the component 2 voxels from it a false positive
    _cube(pred, (6, 5, 5), 8)                  # A found, shifted by one voxel
    _cube(pred, (5, 5, 15), 1)                 # a speck 3 voxels from A, touching A's speck: part of A's match
    _cube(pred, (25, 25, 40), 5)               # a false lesion
    _cube(pred, (35, 35, 55), 1)               # a false one-voxel speck: counted too (the toolkit does)
    ours = lesion_wise(pred, ref, (1.0, 1.0, 1.0))
    assert (ours["lesion_tp"], ours["lesion_fn"], ours["lesion_fp"]) == (1, 1, 2)
    a_ref, a_pred = np.zeros_like(ref), np.zeros_like(pred)
    _cube(a_ref, (5, 5, 5), 8)
    _cube(a_ref, (5, 5, 16), 2)
    _cube(a_pred, (6, 5, 5), 8)
    _cube(a_pred, (5, 5, 15), 1)
    dice_a, hd_a = mp.dc(a_pred, a_ref), mp.hd95(a_pred, a_ref)
    assert ours["lesion_dice"] == pytest.approx(dice_a / 4)
    assert ours["lesion_hd95"] == pytest.approx((hd_a + 3 * LESION_HD95_PENALTY) / 4)
    theirs = _lesion_wise_brute_force(pred, ref, (1.0, 1.0, 1.0))
    assert ours == pytest.approx(theirs, abs=1e-9)
    # with no dilation only overlap matches: the two specks near A and C become false positives too
    no_dilation = lesion_wise(pred, ref, (1.0, 1.0, 1.0), LesionSettings(0, 50.0))
    assert (no_dilation["lesion_tp"], no_dilation["lesion_fn"], no_dilation["lesion_fp"]) == (1, 1, 4)
    assert no_dilation == pytest.approx(_lesion_wise_brute_force(pred, ref, (1.0, 1.0, 1.0), LesionSettings(0, 50.0)))


def test_lesion_wise_empty_masks() -> None:
    empty, one = np.zeros((20, 20, 20), bool), np.zeros((20, 20, 20), bool)
    _cube(one, (5, 5, 5), 5)
    assert lesion_wise(empty, empty, (1, 1, 1)) == {"lesion_dice": 1.0, "lesion_hd95": 0.0, "lesion_tp": 0,
                                                    "lesion_fn": 0, "lesion_fp": 0}
    assert lesion_wise(one, empty, (1, 1, 1))["lesion_hd95"] == LESION_HD95_PENALTY
    assert lesion_wise(empty, one, (1, 1, 1))["lesion_dice"] == 0.0
    assert lesion_wise(one, one, (1, 1, 1))["lesion_dice"] == 1.0


def _two_tumour_reference_and_perturbed_prediction(brats_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Reference: a real BraTS 2019 label plus a second real tumour (another case's, mirrored left-right into the
    other hemisphere). Prediction: the first tumour eroded and shifted, the second left out, a false lesion, a
    false speck, and a speck near the first tumour; cropped to both plus a margin (no metric needs more)."""
    ask, geom = read_image(find_brats_case(brats_dir / "labelled" / "BraTS19_CBICA_ASK_1").label)
    bhq, _ = read_image(find_brats_case(brats_dir / "labelled" / "BraTS19_CBICA_BHQ_1").label)
    mirrored = bhq[:, :, ::-1]
    assert not (ask.astype(bool) & mirrored.astype(bool)).any()
    ref = np.where(ask > 0, ask, mirrored)
    first = ask > 0
    pred = np.where(ndimage.binary_erosion(first), ask, 0)
    pred = np.roll(pred, 2, axis=1)
    pred[85:92, 97:104, 147:154] = np.where(_blob((7, 7, 7), (3, 3, 3), (3.2, 3.2, 3.2)), 4, 0)   # false lesion
    pred[90:92, 100:102, 100:102] = 2                                                             # false speck
    near = ndimage.binary_dilation(first, ndimage.generate_binary_structure(3, 2), iterations=3)
    near &= ~ndimage.binary_dilation(pred > 0, np.ones((3, 3, 3), bool), iterations=2)
    pred[tuple(np.argwhere(near)[0])] = 2                                                         # matched speck
    z, y, x = (np.flatnonzero((ref | pred).any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    box = tuple(slice(max(v[0] - 8, 0), v[-1] + 9) for v in (z, y, x))
    return pred[box], ref[box], geom.spacing_zyx


@pytest.mark.slow
@pytest.mark.brats
def test_real_brats_lesion_wise_matches_brute_force(brats_dir: Path) -> None:
    pred, ref, spacing = _two_tumour_reference_and_perturbed_prediction(brats_dir)
    counts = {}
    for name, values in (("whole tumour", (1, 2, 4)), ("tumour core", (1, 4)), ("enhancing tumour", (4,))):
        p, r = np.isin(pred, values), np.isin(ref, values)
        ours, theirs = lesion_wise(p, r, spacing), _lesion_wise_brute_force(p, r, spacing)
        assert ours == pytest.approx(theirs, abs=1e-3), name
        counts[name] = (ours["lesion_tp"], ours["lesion_fn"], ours["lesion_fp"])
    # matched, missed and false lesions all occur (the false speck is oedema: a whole-tumour false positive only)
    assert counts == {"whole tumour": (1, 1, 2), "tumour core": (1, 1, 1), "enhancing tumour": (1, 1, 1)}


@pytest.mark.slow
@pytest.mark.brats
@pytest.mark.filterwarnings("ignore::FutureWarning")    # MONAI's own use of a deprecated argument
def test_real_brats_nsd_matches_monai(brats_dir: Path) -> None:
    import torch
    from monai.metrics import compute_surface_dice
    pred, ref, spacing = _two_tumour_reference_and_perturbed_prediction(brats_dir)
    for values in ((1, 2, 4), (1, 4), (4,), (2,)):
        p, r = np.isin(pred, values), np.isin(ref, values)
        for sp, tolerance in ((spacing, 1.0), (spacing, 2.0), ((2.0, 1.0, 1.25), 2.0)):
            theirs = float(compute_surface_dice(torch.from_numpy(p[None, None]).float(),
                                                torch.from_numpy(r[None, None]).float(), [tolerance],
                                                include_background=True, spacing=list(sp))[0, 0])
            assert nsd(p, r, sp, tolerance) == pytest.approx(theirs, abs=1e-3), (values, sp, tolerance)


def _copy_labels(src: Path, dst: Path) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    ids = []
    for p in sorted(src.glob("*.nii.gz")):
        shutil.copy(p, dst / p.name)
        ids.append(p.name[:-7])
    return ids


def test_evaluate_folder_writes_csv_and_summary(synthetic_home_session: Path, tmp_path: Path) -> None:
    raw = synthetic_home_session / "raw" / "Dataset001_Synthetic"
    info = DatasetInfo.load(raw / "dataset.json")
    ids = _copy_labels(raw / "labelsTr", tmp_path / "pred")[:3]
    for extra in sorted((tmp_path / "pred").glob("*.nii.gz"))[3:]:
        extra.unlink()
    seg, geom = read_image(tmp_path / "pred" / f"{ids[0]}.nii.gz")
    write_image(tmp_path / "pred" / f"{ids[0]}.nii.gz", np.where(seg == 4, 1, seg).astype(seg.dtype), geom)
    result = evaluate_folder(tmp_path / "pred", raw / "labelsTr", info, tmp_path / "eval", progress=False)
    # references without predictions are reported, the three predictions are scored
    assert len(result.per_case) == 3 and len(result.failed) == 3
    assert all("reference has no prediction" in f for f in result.failed)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["median"]["whole tumour"]["dice"] == 1.0
    et = [result.per_case[c]["enhancing tumour"]["dice"] for c in ids]
    assert et[0] == 0.0 and et[1:] == [1.0, 1.0]
    assert summary["mean"]["enhancing tumour"]["dice"] == pytest.approx(2 / 3)
    assert summary["std"]["enhancing tumour"]["dice"] == pytest.approx(np.std([0, 1, 1]))
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ids and float(rows[0]["enhancing tumour hd95"]) == EMPTY_HD95
    # without --lesion-wise / --nsd-tolerance the files hold exactly what they always did
    assert list(summary) == ["mean", "median", "std", "num_cases", "regions", "empty_convention", "failed", "per_case"]
    assert list(rows[0]) == ["case", *(f"{n} {m}" for n in evaluated_masks(info)
                                       for m in ("dice", "hd95", "sensitivity", "specificity", "n_ref", "n_pred"))]
    assert list(summary["mean"]["whole tumour"]) == ["dice", "hd95", "sensitivity", "specificity"]


def test_cli_lesion_wise_and_nsd_in_summary_csv_and_report(tmp_path: Path, capsys) -> None:
    folders = write_brats_folders(tmp_path / "ref", n=2, shape=(24, 32, 32), convention="brats2023")
    pred = tmp_path / "pred"
    for f in folders:
        seg, geom = read_image(f / f"{f.name}-seg.nii.gz")
        assert not seg[:6, :6, :6].any()
        seg[:2, :2, :2] = 2                       # a false oedema speck far from the tumour
        write_image(pred / f"{f.name}.nii.gz", seg, geom)
    with pytest.raises(SystemExit) as e:
        evaluate_main(["-p", str(pred), "-r", str(tmp_path / "ref"), "--lesion-wise", "--report", "-o",
                       str(tmp_path / "ev")])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "whole tumour: Dice" in out and "NSD" in out and "lesion-wise Dice 0.5000  HD95 187.00 mm" in out
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    wt = summary["mean"]["whole tumour"]
    # one tumour found perfectly plus one false lesion: (1 + 0) / 2 and (0 + 374) / 2
    assert (wt["lesion_dice"], wt["lesion_hd95"]) == (0.5, 187.0) and 0.9 < wt["nsd"] < 1.0
    assert "lesion_dice" not in summary["mean"]["label 1"] and "nsd" in summary["mean"]["label 1"]
    assert summary["nsd_tolerance_mm"] == 1.0 and summary["lesion_wise"]["dilation_iterations"] == 3
    with open(tmp_path / "ev" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["whole tumour lesion_fp"]) for r in rows] == [1, 1]
    assert float(rows[0]["whole tumour nsd"]) == summary["per_case"][folders[0].name]["whole tumour"]["nsd"]
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "whole tumour lesion_dice" in page and "lesion_wise" in page and "nsd_tolerance_mm" in page
    with pytest.raises(SystemExit) as e:       # NSD alone, at another tolerance
        evaluate_main(["-p", str(pred), "-r", str(tmp_path / "ref"), "--nsd-tolerance", "2", "-o",
                       str(tmp_path / "ev2")])
    summary = json.loads((tmp_path / "ev2" / "summary.json").read_text())
    assert summary["nsd_tolerance_mm"] == 2.0 and "lesion_wise" not in summary
    assert summary["mean"]["whole tumour"]["nsd"] >= wt["nsd"] and "lesion_dice" not in summary["mean"]["whole tumour"]


def test_cli_infers_brats_regions_and_reports_bad_cases(tmp_path: Path, capsys) -> None:
    folders = write_brats_folders(tmp_path / "ref", n=3, shape=(24, 32, 32), convention="brats2023")
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in folders:
        shutil.copy(f / f"{f.name}-seg.nii.gz", pred / f"{f.name}.nii.gz")
    seg, geom = read_image(pred / f"{folders[1].name}.nii.gz")
    write_image(pred / f"{folders[1].name}.nii.gz", np.where(seg == 3, 4, seg).astype(seg.dtype), geom)  # 2020 ET
    (pred / f"{folders[2].name}.nii.gz").write_bytes(b"truncated")
    with pytest.raises(SystemExit) as e:
        evaluate_main(["-p", str(pred), "-r", str(tmp_path / "ref"), "--report"])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "enhancing tumour: Dice 1.0000" in captured.out
    assert f"{folders[1].name}.nii.gz" in captured.err and "[4]" in captured.err
    assert f"{folders[2].name}.nii.gz" in captured.err
    assert (pred / "report.html").is_file() and (pred / "overlays" / f"{folders[0].name}.png").is_file()
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["num_cases"] == 1 and summary["regions"]["enhancing tumour"] == [3]


def test_cli_determines_postprocessing(synthetic_home_session: Path, tmp_path: Path) -> None:
    raw = synthetic_home_session / "raw" / "Dataset001_Synthetic"
    ids = _copy_labels(raw / "labelsTr", tmp_path / "pred")
    for cid in ids:
        seg, geom = read_image(tmp_path / "pred" / f"{cid}.nii.gz")
        seg[1:3, 1:3, 1:3] = 2  # a spurious speck far from the tumour
        write_image(tmp_path / "pred" / f"{cid}.nii.gz", seg, geom)
    with pytest.raises(SystemExit) as e:
        evaluate_main(["-p", str(tmp_path / "pred"), "-r", str(raw / "labelsTr"),
                       "--dataset-json", str(raw / "dataset.json"), "--determine-postprocessing",
                       str(tmp_path / "pp.json")])
    assert e.value.code == 0
    plan = PostprocessingPlan.load(tmp_path / "pp.json")
    assert plan.foreground_largest_component and plan.num_cases == len(ids)
