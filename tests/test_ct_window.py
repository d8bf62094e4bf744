"""A fixed CT window (autoseg-plan --ct-window CENTER WIDTH): recorded in plans.json as the ``ct_window``
normalisation, applied by preprocess and predict (clip, then scale to [0, 1]), and refused when it cannot work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli.plan import main as plan_main
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError
from autoseg.fingerprint import CaseFingerprint, Fingerprint, IntensityStats
from autoseg.io import read_image, read_json
from autoseg.planning import plan_dataset
from autoseg.plans import ChannelNormalization, Plans
from autoseg.preprocessing import load_case, preprocess_dataset
from autoseg.preprocessing.normalization import normalize_channel
from autoseg.slices import convert_slices
from autoseg.synthetic_ct import write_png_patients

HU = IntensityStats(mean=30.0, std=200.0, median=35.0, min=-1000.0, max=1500.0, percentile_00_5=-1000.0,
                    percentile_99_5=1200.0)


def _fingerprint(channels: tuple[str, ...], stats: IntensityStats = HU) -> Fingerprint:
    cases = [CaseFingerprint(f"c{i}", [20, 64, 64], [5.0, 0.5, 0.5], "LPS", [20, 60, 60]) for i in range(4)]
    return Fingerprint("Dataset031_CT", {str(i): n for i, n in enumerate(channels)}, 4, cases,
                       [stats] * len(channels), [c.case_id for c in cases])


def _info(fp: Fingerprint) -> DatasetInfo:
    return DatasetInfo(channel_names=fp.channel_names, labels={"background": 0, "lesion": 1}, file_ending=".nii.gz",
                       num_training=fp.num_training)


def test_window_is_planned_for_ct_channels_and_explained() -> None:
    fp = _fingerprint(("CT", "T1"))
    plans = plan_dataset(fp, _info(fp), 8, "test", ct_window=(40, 80))
    for config in plans.configurations.values():
        ct, other = config.normalization
        assert (ct.scheme, ct.lower, ct.upper) == ("ct_window", 0.0, 80.0) and other.scheme == "zscore"
    assert any("fixed window 40/80" in s for s in plans.explanation)
    # without the option: nnU-Net's CT scheme (percentiles, z-score)
    assert plan_dataset(fp, _info(fp), 8, "test").configurations["2d"].normalization[0].scheme == "ct"
    # the only channel is windowed whatever its name
    single = _fingerprint(("image",))
    assert plan_dataset(single, _info(single), 8, "test", ct_window=(40, 80)).configurations["2d"] \
        .normalization[0].scheme == "ct_window"


@pytest.mark.parametrize("channels, window, stats, message", [
    (("T1", "T2"), (40, 80), HU, "no channel is named CT"),
    (("CT",), (40, 0), HU, "positive width"),
    (("CT",), (40, 80), IntensityStats(1040, 20, 1040, 990, 1100, 1000, 1080), "give the window in the images' own"),
])
def test_window_that_cannot_work_is_one_line_with_the_fix(channels, window, stats, message) -> None:
    fp = _fingerprint(channels, stats)
    with pytest.raises(AutosegError) as e:
        plan_dataset(fp, _info(fp), 8, "test", ct_window=window)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_window_normalisation_clips_and_scales_to_unit_range() -> None:
    image = np.array([-1000, -20, 0, 40, 80, 120, 1500], dtype=np.float32)
    used = normalize_channel(image, ChannelNormalization("ct_window", False, lower=0.0, upper=80.0),
                             np.ones_like(image, bool))
    np.testing.assert_allclose(image, [0, 0, 0, 0.5, 1, 1, 1])
    assert used == (0.0, 80.0)
    with pytest.raises(AutosegError, match="not a range"):
        normalize_channel(image, ChannelNormalization("ct_window", False, lower=80.0, upper=0.0), image > 0)


def test_cli_window_on_16_bit_png_in_hu_is_recorded_and_preprocessed(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    folders = write_png_patients(src, n=3, shape=(6, 40, 40), seed=2, bits=16)
    home = tmp_path / "home"
    paths = convert_slices(src, home, 31, "StrokeCT", spacing_zyx=(5.0, 0.5, 0.5), channel_name="CT",
                           intercept=-1024, workers=1)
    d = read_json(paths.dataset_json)
    assert d["autoseg_intercept"] == -1024 and d["autoseg_slice_spacing"] == [5.0, 0.5, 0.5]
    image, _ = read_image(paths.raw / "imagesTr" / "patient_001_0000.nii.gz")
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(folders[0] / "001.png")))
    assert image.dtype == np.int16 and np.array_equal(image[0], png.astype(np.int32) - 1024)
    with pytest.raises(AutosegError, match="converted with --intercept -1024, not 0"):   # cases added later: same
        convert_slices(src, home, 31, "StrokeCT", spacing_zyx=(5.0, 0.5, 0.5), channel_name="CT", workers=1)

    common = ["-d", "31", "--home", str(home), "--vram", "0.25", "--base-features", "4", "--max-features", "16",
              "-np", "1"]
    with pytest.raises(SystemExit) as e:
        plan_main([*common, "--ct-window", "40", "80"])
    assert e.value.code in (0, None)
    norm = read_json(paths.plans_json)["configurations"]["2d"]["normalization"][0]
    assert norm["scheme"] == "ct_window" and (norm["lower"], norm["upper"]) == (0.0, 80.0)
    preprocess_dataset(paths, "2d", workers=1)
    case = load_case(paths.config_dir("2d"), "patient_001")
    expected = np.clip(image.astype(np.float32) / 80, 0, 1)
    np.testing.assert_allclose(np.asarray(case.data[0]), expected, atol=1e-6)   # no crop: air is -1000, not 0

    with pytest.raises(SystemExit) as e:   # in stored values 40/80 would be HU + 1024 -> refused with the fix
        plan_main(["-d", "31", "--home", str(home), "--ct-window", "40", "0"])
    assert e.value.code == 2 and "positive width" in capsys.readouterr().err
    assert Plans.load(paths.plans_json).configurations["2d"].normalization[0].scheme == "ct_window"
