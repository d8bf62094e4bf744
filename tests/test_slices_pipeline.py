"""PNG/TIFF slices and 2D images through the whole path: a 2D dataset plans only the 2d configuration, and
plan -> preprocess -> train -> predict -> evaluate run on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli.evaluate import main as evaluate_main
from autoseg.cli.plan import main as plan_main
from autoseg.cli.predict import main as predict_main
from autoseg.cli.preprocess import main as preprocess_main
from autoseg.cli.train import main as train_main
from autoseg.io import read_image, read_json, write_image
from autoseg.paths import DatasetPaths
from autoseg.plans import Plans
from autoseg.slices import convert_slices

TINY_PLAN = ["--vram", "0.25", "--base-features", "4", "--max-features", "16"]
TINY_TRAIN = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--workers", "0", "--device", "cpu",
              "--precision", "fp32"]


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def disc_image(seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A grey 8-bit image with a bright disc on a noisy background, and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(14, size - 14, 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(25, 60)
    image = np.clip(60 + 20 * rng.standard_normal((size, size)) + 120 * disc, 1, 255).astype(np.uint8)
    return image, disc.astype(np.uint8) * 255


def write_2d_images(src: Path, n_train: int, n_test: int) -> Path:
    """``src/images/case_K.png`` with masks for the training cases; the test cases' masks go to ``src/test_masks``."""
    for k in range(n_train + n_test):
        image, mask = disc_image(k)
        _write_png(src / "images" / f"case_{k:02d}.png", image)
        _write_png(src / ("masks" if k < n_train else "test_masks") / f"case_{k:02d}.png", mask)
    return src


@pytest.mark.slow
def test_2d_images_plan_only_2d_and_train_predict_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = write_2d_images(tmp_path / "src", n_train=6, n_test=2)
    home = tmp_path / "home"
    paths = convert_slices(src, home, 21, "Discs", spacing_zyx=(1.0, 0.5, 0.5))
    common = ["-d", "21", "--home", str(home)]

    with pytest.raises(SystemExit) as e:
        plan_main([*common, *TINY_PLAN])
    assert e.value.code in (0, None)
    plans = Plans.load(paths.plans_json)
    assert list(plans.configurations) == ["2d"] and plans.default_configuration == "2d"
    assert plans.configurations["2d"].spacing == [0.5, 0.5]
    assert any("2D images" in s for s in plans.explanation)

    with pytest.raises(SystemExit) as e:
        preprocess_main([*common, "-np", "1"])    # without -c: the plan's only configuration
    assert e.value.code in (0, None) and (paths.config_dir("2d") / "case_00.json").is_file()
    with pytest.raises(SystemExit) as e:
        train_main(["2d", "fold0", *common, *TINY_TRAIN])
    assert e.value.code in (0, None)

    out = tmp_path / "pred"
    with pytest.raises(SystemExit) as e:
        predict_main(["-i", str(paths.raw / "imagesTs"), "-o", str(out), *common, "--no-tta"])   # -c: the only one
    assert e.value.code in (0, None)
    refs = tmp_path / "refs"
    for k in (6, 7):
        pred, geometry = read_image(out / f"case_{k:02d}.nii.gz")
        _, image_geometry = read_image(paths.raw / "imagesTs" / f"case_{k:02d}_0000.nii.gz")
        assert pred.shape == (1, 48, 48) and geometry == image_geometry
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "test_masks" / f"case_{k:02d}.png")))
        write_image(refs / f"case_{k:02d}.nii.gz", (mask[None] > 0).astype(np.uint8), geometry)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        evaluate_main(["-p", str(out), "-r", str(refs), *common])
    assert e.value.code in (0, None)
    summary = read_json(out / "summary.json")
    assert summary["num_cases"] == 2 and "foreground" in summary["mean"]


@pytest.mark.slow
def test_png_patient_folders_through_the_whole_path_with_context_and_window(tmp_path: Path, capsys) -> None:
    """The issue's done-when chain, command by command, on 16-bit PNG patient folders written here."""
    from autoseg.cli.convert import main as convert_main
    from autoseg.synthetic_ct import write_png_patients

    src = tmp_path / "data"
    write_png_patients(src, n=4, shape=(8, 40, 40), seed=7, bits=16)
    home = tmp_path / "home"
    common = ["-d", "22", "--home", str(home)]

    def run(main, args: list[str]) -> None:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code in (0, None), capsys.readouterr().err[-2000:]

    run(convert_main, ["slices", str(src), "-d", "22", "--name", "Stroke", "--spacing", "5", "0.5", "0.5",
                       "--channel-name", "CT", "--intercept", "-1024", "--home", str(home), "-np", "1"])
    run(plan_main, [*common, *TINY_PLAN, "--ct-window", "40", "80", "--context-slices", "2", "-np", "1"])
    paths = DatasetPaths(home, "Dataset022_Stroke")
    plans = read_json(paths.plans_json)
    assert plans["configurations"]["2d"]["network"]["context_slices"] == 2
    assert plans["configurations"]["2d"]["normalization"][0]["scheme"] == "ct_window"
    run(preprocess_main, [*common, "-c", "2d", "-np", "1"])
    run(train_main, ["2d", "fold0", *common, *TINY_TRAIN])
    out = tmp_path / "out"
    run(predict_main, ["-i", str(src / "images"), "-o", str(out), *common, "-c", "2d", "--no-tta"])
    for folder in sorted((src / "images").iterdir()):
        written = sorted((out / folder.name).iterdir())
        assert [p.name for p in written] == [p.name for p in sorted(folder.iterdir())]
        for p in written:
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            assert mask.shape == (40, 40) and set(np.unique(mask)) <= {0, 255}
    run(evaluate_main, ["-p", str(out), "-r", str(src / "masks"), *common])
    summary = read_json(out / "summary.json")
    assert summary["num_cases"] == 4 and 0.0 <= summary["mean"]["foreground"]["dice"] <= 1.0


@pytest.mark.slow
def test_stroke_ct_demo_quick_runs_the_path_and_prints_lesion_dice(tmp_path: Path, capsys) -> None:
    from autoseg.cli.demo import main as demo_main

    with pytest.raises(SystemExit) as e:
        demo_main(["--task", "stroke-ct", "--quick", "--home", str(tmp_path / "home"), "-np", "1",
                   "--precision", "fp32", "--threads", "1"])
    assert e.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "lesion" in printed and "demo finished" in printed
    out = tmp_path / "home" / "demo_stroke"
    patients = sorted(p.name for p in (out / "predictions").iterdir() if p.is_dir() and p.name != "provenance")
    assert patients == ["patient_005", "patient_006"]   # provenance/ records what produced each case
    assert len(list((out / "predictions" / "patient_005").glob("*.png"))) == 12
    assert (out / "overlays" / "patient_005.png").is_file() and (out / "report.html").is_file()
    plans = read_json(tmp_path / "home" / "preprocessed" / "Dataset998_DemoStrokeCT" / "plans.json")
    assert plans["configurations"]["2d"]["network"]["context_slices"] == 2
