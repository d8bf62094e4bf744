"""The planner: nnU-Net's decisions for BraTS, anisotropic, CT and large datasets; reference plans; the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from autoseg.brats import dataset_json_for
from autoseg.cli.plan import main as plan_main
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError
from autoseg.fingerprint import CaseFingerprint, Fingerprint, IntensityStats
from autoseg.network import build_network
from autoseg.network.memory import estimate_training_memory_bytes
from autoseg.planning import (
    PRESETS,
    detect_vram,
    memory_budget_bytes,
    plan_dataset,
    select_preset,
    topology,
)
from autoseg.planning.presets import VramPreset
from autoseg.planning.reference import differences, plans_dir, reference_plans
from autoseg.plans import Plans

STATS = IntensityStats(mean=100.0, std=20.0, median=100.0, min=-1000.0, max=3000.0, percentile_00_5=-900.0,
                       percentile_99_5=1500.0)


def fingerprint(shapes, spacings, crops=None, channels=("T1", "T1ce", "T2", "FLAIR")) -> Fingerprint:
    crops = crops or [None] * len(shapes)
    cases = [CaseFingerprint(f"c{i:03d}", list(s), list(sp), "LPS", list(c) if c else None)
             for i, (s, sp, c) in enumerate(zip(shapes, spacings, crops))]
    return Fingerprint("Dataset009_Test", {str(i): n for i, n in enumerate(channels)}, len(cases), cases,
                       [STATS] * len(channels), [c.case_id for c in cases])


def info_for(fp: Fingerprint) -> DatasetInfo:
    if len(fp.channel_names) == 4:
        return DatasetInfo.from_dict(dataset_json_for("brats2020", fp.num_training, "Test"))
    return DatasetInfo(channel_names=fp.channel_names, labels={"background": 0, "organ": 1}, file_ending=".nii.gz",
                       num_training=fp.num_training)


@pytest.fixture(scope="module")
def brats_fp() -> Fingerprint:
    return Fingerprint.load(plans_dir() / "reference" / "brats_fingerprint.json")


def test_brats_at_8gb_matches_nnunet(brats_fp):
    plans = plan_dataset(brats_fp, info_for(brats_fp), 8, "test")
    c = plans.configurations["3d_fullres"]
    assert c.patch_size == [128, 128, 128] and c.batch_size == 2
    assert c.network.arch == "unet" and c.network.features == [32, 64, 128, 256, 320, 320]
    assert c.network.strides == [[1, 1, 1]] + [[2, 2, 2]] * 5 and c.network.kernel_sizes == [[3, 3, 3]] * 6
    assert c.spacing == [1.0, 1.0, 1.0] and c.batch_dice is False and c.mirror_axes == [0, 1, 2]
    assert all(n.scheme == "zscore" and n.use_mask for n in c.normalization)
    assert "3d_lowres" not in plans.configurations
    assert plans.configurations["2d"].batch_dice and plans.configurations["2d"].network.features[-1] == 512
    assert plans.region_based and plans.num_outputs == 3 and plans.num_channels == 4
    assert c.memory_estimate_gb * 2 ** 30 <= memory_budget_bytes(8)
    text = " ".join(plans.explanation)
    for word in ("median spacing", "Patch 128 x 128 x 128", "Batch size 2", "6 stages", "budget", "No 3d_lowres"):
        assert word in text


def test_every_plan_fits_its_budget_and_grows_with_vram(brats_fp):
    info = info_for(brats_fp)
    last = 0
    for vram in (0.5, 2, 8, 12, 24, 40, 80):
        for c in plan_dataset(brats_fp, info, vram, "test").configurations.values():
            est = estimate_training_memory_bytes(c.network, c.patch_size, c.batch_size, 4, 3, True)
            assert est <= memory_budget_bytes(vram)
            assert all(p % int(np.prod([s[d] for s in c.network.strides])) == 0 for d, p in enumerate(c.patch_size))
            if c.name == "3d_fullres":
                size = np.prod(c.patch_size) * c.batch_size
                assert size >= last
                last = size


def test_anisotropic_spacing_uses_tenth_percentile_and_inplane_pooling():
    rng = np.random.default_rng(0)
    spacings = [[float(z), 0.7, 0.7] for z in rng.choice([3.0, 5.0, 6.0], size=20, p=[0.2, 0.5, 0.3])]
    shapes = [[int(round(120 / s[0])), 320, 320] for s in spacings]
    fp = fingerprint(shapes, spacings, channels=("MRI",))
    plans = plan_dataset(fp, info_for(fp), 8, "test")
    c = plans.configurations["3d_fullres"]
    assert c.spacing[0] == pytest.approx(np.percentile([s[0] for s in spacings], 10))
    assert c.network.strides[1] == [1, 2, 2]           # z is not pooled while it is much coarser
    assert c.network.kernel_sizes[0] == [1, 3, 3]
    assert "10th percentile" in " ".join(plans.explanation)


def test_ct_channel_uses_fingerprint_statistics():
    fp = fingerprint([[100, 200, 200]] * 4, [[1.0, 1.0, 1.0]] * 4, channels=("CT",))
    norm = plan_dataset(fp, info_for(fp), 8, "test").configurations["3d_fullres"].normalization
    assert norm[0].scheme == "ct" and norm[0].lower == -900.0 and norm[0].upper == 1500.0
    assert norm[0].mean == 100.0 and norm[0].std == 20.0 and not norm[0].use_mask


def test_large_images_get_a_lowres_configuration():
    fp = fingerprint([[400, 400, 400]] * 10, [[1.0, 1.0, 1.0]] * 10, channels=("CT",))
    plans = plan_dataset(fp, info_for(fp), 8, "test")
    low, full = plans.configurations["3d_lowres"], plans.configurations["3d_fullres"]
    assert low.spacing[0] > full.spacing[0] and full.batch_dice
    assert np.prod(low.patch_size) / np.prod(low.median_shape) >= 0.25


def test_tiny_plan_trains_a_cpu_network():
    fp = fingerprint([[48, 64, 64]] * 6, [[1.0, 1.0, 1.0]] * 6, crops=[[38, 56, 50]] * 6)
    plans = plan_dataset(fp, info_for(fp), 0.5, "test", base_features=8, max_features=64)
    c = plans.configurations["3d_fullres"]
    assert c.network.features[0] == 8 and max(c.network.features) == 64
    assert c.patch_size == [40, 56, 56]
    net = build_network(c.network, plans.num_channels, plans.num_outputs)
    out = net(torch.zeros(1, plans.num_channels, *c.patch_size))
    assert list(out[0].shape) == [1, 3, *c.patch_size]
    again = Plans.from_dict(json.loads(json.dumps(plans.to_dict())))
    assert again == plans


def test_arch_override_and_presets():
    assert select_preset(4).name == "8gb" and select_preset(12).name == "12gb" and select_preset(100).name == "80gb"
    assert select_preset(24).arch == "resenc_unet"
    # detected sizes are a little below the nominal ones (GiB, driver reserve)
    assert [select_preset(g).name for g in (7.6, 11.7, 23.6, 39.4, 79.2)] == ["8gb", "12gb", "24gb", "40gb", "80gb"]
    fp = fingerprint([[48, 64, 64]] * 6, [[1.0, 1.0, 1.0]] * 6)
    plans = plan_dataset(fp, info_for(fp), 8, "test", arch="resenc_unet")
    net = plans.configurations["3d_fullres"].network
    assert net.arch == "resenc_unet" and net.n_conv_encoder[:3] == [1, 3, 4] and set(net.n_conv_decoder) == {1}


@pytest.mark.parametrize("kwargs,message", [
    (dict(vram_gb=0), "must be positive"),
    (dict(arch="vnet"), "unknown network 'vnet'; use one of unet, resenc_unet, segresnet, attention_unet"),
    (dict(base_features=64, max_features=32), "features"),
    (dict(vram_gb=0.001), "--vram"),
])
def test_bad_requests_fail_with_the_fix(kwargs, message):
    fp = fingerprint([[48, 64, 64]] * 2, [[1.0, 1.0, 1.0]] * 2)
    args = dict(vram_gb=8, vram_source="test") | kwargs
    with pytest.raises(AutosegError, match=message):
        plan_dataset(fp, info_for(fp), **args)


def test_topology_pools_to_edge_four():
    t = topology([160, 160, 160], [1.0, 1.0, 1.0])
    assert len(t.strides) == 6 and t.divisor == [32, 32, 32]
    t = topology([30, 50, 50], [1.0, 1.0, 1.0])
    assert t.patch_size == [32, 56, 56] and t.divisor == [8, 8, 8]


def test_reference_plans_and_presets_are_current():
    """Fails when the planner's policy changed without ``python -m autoseg.planning.reference --update``."""
    assert differences() == []
    for p in PRESETS:
        on_disk = json.loads((plans_dir() / "presets" / f"{p.name}.json").read_text())
        assert VramPreset(**on_disk) == p
    ref = reference_plans()["brats_8gb"]
    assert Plans.load(plans_dir() / "reference" / "brats_8gb.json") == ref


def test_reference_check_notices_a_change(tmp_path):
    import shutil

    shutil.copytree(plans_dir(), tmp_path / "plans")
    path = tmp_path / "plans" / "reference" / "brats_8gb.json"
    d = json.loads(path.read_text())
    d["configurations"]["3d_fullres"]["batch_size"] = 3
    path.write_text(json.dumps(d))
    assert [str(path)] == [line.split(": ")[0] for line in differences(tmp_path / "plans")]


def test_detect_vram_without_cuda():
    vram, source = detect_vram()
    if not torch.cuda.is_available():
        assert vram is None and "no CUDA" in source
    else:
        assert vram > 0


# ---- the command ----------------------------------------------------------------------------------

def run(args: list[str]) -> int:
    """autoseg-plan's exit code."""
    try:
        plan_main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_cli_plans_explains_and_reuses_the_fingerprint(synthetic_home, capsys):
    args = ["--home", str(synthetic_home), "--vram", "0.5", "--base-features", "8", "--max-features", "64"]
    assert run(args + ["--explain"]) == 0
    out = capsys.readouterr().out
    plans_json = synthetic_home / "preprocessed" / "Dataset001_Synthetic" / "plans.json"
    plans = Plans.load(plans_json)
    assert "3d_fullres" in out and "Fingerprint computed" in out and "Batch size" in out
    assert plans.vram_gb == 0.5 and plans.configurations["3d_fullres"].network.features[0] == 8
    assert run(args) == 0
    assert "Fingerprint reused" in Plans.load(plans_json).explanation[0]


def test_cli_without_gpu_plans_for_8gb(synthetic_home, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run(["--home", str(synthetic_home)]) == 0
    assert "planned for 8 GB" in capsys.readouterr().out


def test_cli_verify_only_and_bad_input(synthetic_home, tmp_path, capsys):
    assert run(["--home", str(synthetic_home), "--verify"]) == 0
    assert "dataset OK" in capsys.readouterr().out
    assert not (synthetic_home / "preprocessed" / "Dataset001_Synthetic" / "plans.json").exists()
    assert run(["--home", str(synthetic_home), "--vram", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "autoseg-plan: error: argument --vram: -1 must be a number above 0; e.g. --vram 8"]
    assert run(["--home", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "autoseg-plan: error:" in err and "Traceback" not in err


def test_plan_changes_when_raw_data_changes(synthetic_home):
    from autoseg.paths import resolve_dataset
    from autoseg.planning.stage import fingerprint_for

    paths = resolve_dataset(synthetic_home, None)
    fp, reused = fingerprint_for(paths)
    assert not reused and fingerprint_for(paths)[1]
    st = (paths.raw / "dataset.json").stat()
    os.utime(paths.raw / "dataset.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    again, reused = fingerprint_for(paths)
    assert not reused and again.cases == fp.cases


def test_median_image_comes_from_the_cropped_sampled_cases():
    """The fingerprint crops only the cases it sampled; their cropped shapes, not the others' full
    shapes, make the median image."""
    crops = [[140, 170, 138]] * 5 + [None] * 25
    fp = fingerprint([[155, 240, 240]] * 30, [[1.0, 1.0, 1.0]] * 30, crops=crops)
    assert plan_dataset(fp, info_for(fp), 8, "test").configurations["3d_fullres"].median_shape == [140, 170, 138]
    uncropped = fingerprint([[155, 240, 240]] * 30, [[1.0, 1.0, 1.0]] * 30)
    assert plan_dataset(uncropped, info_for(uncropped), 8, "test").configurations["3d_fullres"].median_shape == \
        [155, 240, 240]


def test_spacing_override_is_used_and_explained(synthetic_home) -> None:
    """--spacing 2 gives a 2 mm plan (smaller median image and patch) and says why; bad values are one line."""
    from autoseg.cli.plan import main

    main_args = ["--home", str(synthetic_home), "--vram", "0.5", "--base-features", "4", "--spacing", "2"]
    with pytest.raises(SystemExit) as e:
        main(main_args)
    assert e.value.code == 0
    plans = Plans.load(synthetic_home / "preprocessed" / "Dataset001_Synthetic" / "plans.json")
    full = plans.configurations["3d_fullres"]
    assert full.spacing == [2.0, 2.0, 2.0] and full.median_shape[1] <= 32
    assert any("given with --spacing" in s for s in plans.explanation)
    with pytest.raises(SystemExit) as e:
        main(["--home", str(synthetic_home), "--spacing", "1", "2"])
    assert e.value.code == 2


def test_replanning_unchanged_raw_data_skips_the_check_and_a_change_reruns_it(synthetic_home, monkeypatch) -> None:
    """The dataset check reads every voxel; it reruns only when a raw file changed since it passed."""
    from autoseg.paths import resolve_dataset
    from autoseg.planning import stage

    paths = resolve_dataset(synthetic_home, None)
    stage.run_planning(paths, vram_gb=0.5, base_features=4)
    calls: list = []
    monkeypatch.setattr(stage, "verify_dataset", lambda raw, workers=2: calls.append(raw))
    stage.run_planning(paths, vram_gb=1.0, base_features=4)
    assert calls == []
    label = next((paths.raw / "labelsTr").iterdir())
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 1_000_000_000))
    stage.run_planning(paths, vram_gb=1.0, base_features=4)
    assert calls == [paths.raw]
