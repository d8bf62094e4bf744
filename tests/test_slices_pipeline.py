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
        predict_main(["-i", str(paths.raw / "imagesTs"), "-o", str(out), *common, "-c", "2d", "--no-tta"])
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
