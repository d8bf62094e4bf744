"""Prediction of raw and BraTS-named folders with checkpoints: geometry, conventions, reruns, bad cases, CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from autoseg.checkpoint import save_checkpoint
from autoseg.cli.predict import main as predict_main
from autoseg.dataset import DatasetInfo
from autoseg.inference.predictor import (Predictor, find_input_cases, output_label_map, predict_folder, read_input_case,
                                         segmentation_from_probabilities)
from autoseg.io import read_header, read_image
from autoseg.network import network_for_dataset
from autoseg.paths import DatasetPaths
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan
from autoseg.synthetic import write_brats_folders

DS = "Dataset001_Synthetic"


def tiny_plan() -> ConfigurationPlan:
    net = NetworkPlan("unet", [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [1, 1, 1], [1, 1])
    return ConfigurationPlan("3d_fullres", [1.0, 1.0, 1.0], [48, 64, 64], [48, 64, 64], 2, net,
                             [ChannelNormalization("zscore", True)] * 4, 0.1)


def write_fold(home: Path, fold: int, seed: int) -> Path:
    """An untrained but valid checkpoint, as autoseg-train writes it."""
    paths = DatasetPaths(home, DS)
    info = DatasetInfo.load(paths.dataset_json)
    plan = tiny_plan()
    torch.manual_seed(seed)
    net = network_for_dataset(plan.network, info)
    path = paths.fold_dir("3d_fullres", fold) / "checkpoint_final.pt"
    save_checkpoint(path, {"configuration": asdict(plan), "dataset": info.to_dict(), "network_state": net.state_dict(),
                           "epoch": 0})
    return path


@pytest.fixture
def trained_home(synthetic_home: Path) -> Path:
    write_fold(synthetic_home, 0, 0)
    write_fold(synthetic_home, 1, 1)
    return synthetic_home


def _predictor(home: Path, folds=(0,), **kw) -> Predictor:
    return Predictor.from_results(DatasetPaths(home, DS), "3d_fullres", list(folds), device="cpu", precision="fp32",
                                  mirroring=False, **kw)


def test_predict_folder_writes_input_geometry_and_skips_on_rerun(trained_home: Path, tmp_path: Path) -> None:
    raw = trained_home / "raw" / DS / "imagesTs"
    out = tmp_path / "pred"
    pred = _predictor(trained_home)
    report = predict_folder(pred, raw, out, save_probs=True, progress=False)
    assert report.written == ["case_006", "case_007"] and not report.failed
    for cid in report.written:
        seg, geom = read_image(out / f"{cid}.nii.gz")
        assert geom == read_header(raw / f"{cid}_0000.nii.gz")
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
        with np.load(out / f"{cid}.npz") as z:
            assert z["probabilities"].dtype == np.float16 and z["probabilities"].shape == (3, *seg.shape)
    again = predict_folder(pred, raw, out, save_probs=True, progress=False)
    assert again.skipped == ["case_006", "case_007"] and not again.written


def test_bad_cases_are_reported_and_others_finish(trained_home: Path, tmp_path: Path, capsys) -> None:
    raw = trained_home / "raw" / DS / "imagesTs"
    for k in range(4):
        shutil.copy(raw / f"case_007_{k:04d}.nii.gz", raw / f"case_009_{k:04d}.nii.gz")
    (raw / "case_006_0002.nii.gz").write_bytes(b"not a nifti")   # unreadable
    (raw / "case_007_0003.nii.gz").unlink()                       # missing channel
    out = tmp_path / "pred"
    with pytest.raises(SystemExit) as e:
        predict_main(["-i", str(raw), "-o", str(out), "--home", str(trained_home), "-f", "0", "--no-tta",
                      "--device", "cpu", "--precision", "fp32", "--png"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "case_006_0002.nii.gz" in err and "case_007_0003.nii.gz" in err and "1 written" in err
    assert (out / "case_009.nii.gz").is_file()
    assert not (out / "case_006.nii.gz").exists() and not (out / "case_007.nii.gz").exists()
    assert sorted(p.name for p in out.iterdir()) == ["case_009.nii.gz", "case_009.png", "provenance"]  # no temporaries


def test_folds_are_averaged_in_logit_space(trained_home: Path) -> None:
    small = replace(tiny_plan(), patch_size=[16, 16, 16])
    both, one, two = (replace(_predictor(trained_home, folds), config=small) for folds in ((0, 1), (0,), (1,)))
    assert len(both.networks) == 2
    data = torch.randn(4, 16, 16, 16)
    torch.testing.assert_close(both.logits(data), (one.logits(data) + two.logits(data)) / 2)


def test_brats_folders_keep_their_own_label_convention(trained_home: Path, tmp_path: Path) -> None:
    folders = write_brats_folders(tmp_path / "in", n=1, convention="brats2023", labelled=False)
    cases = find_input_cases(tmp_path / "in", 4)
    assert [c.convention for c in cases] == ["brats2023"] and cases[0].case_id == folders[0].name
    report = predict_folder(_predictor(trained_home), tmp_path / "in", tmp_path / "out", progress=False)
    assert report.written == [folders[0].name]
    info = DatasetInfo.load(trained_home / "raw" / DS / "dataset.json")
    assert output_label_map(info, "brats2023") == {4: 3} and output_label_map(info, "brats2020") == {}
    probs = np.zeros((3, 2, 2, 2), np.float32)
    probs[:, 0] = 0.9          # WT, TC, ET all on in slice 0 -> enhancing
    probs[0, 1] = 0.9          # only WT in slice 1 -> oedema
    seg = segmentation_from_probabilities(probs, info, "brats2023")
    assert (seg[0] == 3).all() and (seg[1] == 2).all()
    assert (segmentation_from_probabilities(probs, info, None)[0] == 4).all()


def test_missing_checkpoint_is_one_line(synthetic_home: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        predict_main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "--home", str(synthetic_home)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint_final.pt" in err


def test_shards_split_the_cases(trained_home: Path, tmp_path: Path) -> None:
    raw = trained_home / "raw" / DS / "imagesTs"
    report = predict_folder(_predictor(trained_home), raw, tmp_path / "out", shard=(1, 2), progress=False)
    assert report.written == ["case_007"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_007.nii.gz", "provenance"]


def test_compile_failure_falls_back_to_eager(trained_home: Path, monkeypatch, capsys) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda net, **kw: Broken())
    small = replace(tiny_plan(), patch_size=[16, 16, 16])
    eager = replace(_predictor(trained_home), config=small)
    compiled = replace(_predictor(trained_home), config=small, compile=True)
    data = torch.randn(4, 16, 16, 16)
    torch.testing.assert_close(compiled.logits(data), eager.logits(data))
    assert not compiled.compile and "torch.compile unavailable" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_channels_predict_from_the_rest_with_or_without_their_files(trained_home: Path, tmp_path: Path,
                                                                            capsys) -> None:
    raw = trained_home / "raw" / DS / "imagesTs"
    absent = tmp_path / "absent"
    absent.mkdir()
    for f in raw.glob("case_006_*.nii.gz"):
        if not f.name.endswith("_0003.nii.gz"):
            shutil.copy(f, absent / f.name)                     # case_006 without its FLAIR file
    args = ["--home", str(trained_home), "-f", "0", "--no-tta", "--device", "cpu", "--precision", "fp32"]
    with pytest.raises(SystemExit) as e:
        predict_main(["-i", str(absent), "-o", str(tmp_path / "refused"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "case_006_0003.nii.gz" in err and "--missing" in err
    for src, out, names in ((absent, "a", ["flair"]), (raw, "b", ["3"])):   # a name in any case, or a number
        with pytest.raises(SystemExit) as e:
            predict_main(["-i", str(src), "-o", str(tmp_path / out), "--missing", *names, *args])
        assert e.value.code == 0, capsys.readouterr().err
    capsys.readouterr()
    # a present file is ignored: the same output as when it is absent, and not the full-input output
    a, _ = read_image(tmp_path / "a" / "case_006.nii.gz")
    b, _ = read_image(tmp_path / "b" / "case_006.nii.gz")
    np.testing.assert_array_equal(a, b)
    info = DatasetInfo.load(trained_home / "raw" / DS / "dataset.json")
    predictor = _predictor(trained_home)
    images, geometry = read_input_case(find_input_cases(raw, 4)[0])
    full = predictor.predict(images, geometry)
    predictor.missing_channels = (3,)
    assert not np.allclose(full, predictor.predict(images, geometry))
    for bad, says in ((["T1", "T1ce", "T2", "FLAIR"], "every channel"), (["ADC"], "no such channel")):
        with pytest.raises(SystemExit) as e:
            predict_main(["-i", str(raw), "-o", str(tmp_path / "c"), "--missing", *bad, *args])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and says in err
    assert info.channel_names["3"] == "FLAIR"
