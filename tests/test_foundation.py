"""Foundation: paths, dataset.json, atomic writes, image I/O errors, region round trip, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoseg import brats
from autoseg.dataset import DatasetInfo, list_cases
from autoseg.errors import AutosegError
from autoseg.io import Geometry, atomic_path, read_image, write_image, write_json_atomic
from autoseg.paths import DatasetPaths, resolve_dataset
from autoseg.plans import default_configuration
from autoseg.synthetic import make_case


def test_resolve_dataset_by_number_name_and_default(synthetic_home: Path) -> None:
    assert resolve_dataset(synthetic_home, None).name == "Dataset001_Synthetic"
    assert resolve_dataset(synthetic_home, "1").name == "Dataset001_Synthetic"
    assert resolve_dataset(synthetic_home, "synthetic").name == "Dataset001_Synthetic"
    (synthetic_home / "raw" / "Dataset002_Other").mkdir()
    with pytest.raises(AutosegError, match="2 datasets found"):
        resolve_dataset(synthetic_home, None)
    with pytest.raises(AutosegError, match="no dataset matches"):
        resolve_dataset(synthetic_home, "7")


def test_trained_configurations_and_the_default_without_a_plan(tmp_path: Path) -> None:
    """Configurations with a fold checkpoint, per recipe; without plans.json the default is the only one trained."""
    paths = DatasetPaths(tmp_path, "Dataset001_X")
    assert paths.trained_configurations() == [] and default_configuration(paths) == "3d_fullres"
    for folder, fold in (("2d", "fold_0"), ("resenc__3d_lowres", "fold_all"), ("3d_fullres", "fold_1")):
        (paths.results / folder / fold).mkdir(parents=True)
    (paths.results / "2d" / "fold_0" / "checkpoint_final.pt").touch()
    (paths.results / "resenc__3d_lowres" / "fold_all" / "checkpoint_final.pt").touch()
    assert paths.trained_configurations() == ["2d"] and default_configuration(paths) == "2d"
    assert paths.trained_configurations("resenc") == ["3d_lowres"]
    assert paths.trained_configurations(checkpoint="checkpoint_best.pt") == []
    (paths.results / "3d_fullres" / "fold_1" / "checkpoint_final.pt").touch()
    assert paths.trained_configurations() == ["2d", "3d_fullres"] and default_configuration(paths) == "3d_fullres"


def test_shard_overlap_rule_matches_the_cases_the_jobs_take() -> None:
    """Jobs i/n and j/m (autoseg.parallel.shard: every n-th sorted case from i) share a case exactly when the
    lock rule says so; every lock name reads back as its shard."""
    from autoseg.locks import lock_name, shard_of_lock, shards_overlap
    from autoseg.parallel import shard
    cases = list(range(120))
    for n, m in [(a, b) for a in range(1, 7) for b in range(1, 7)]:
        for i in range(n):
            for j in range(m):
                shared = set(shard(cases, i, n)) & set(shard(cases, j, m))
                assert shards_overlap((i, n), (j, m)) == bool(shared), (i, n, j, m)
                assert shard_of_lock(lock_name((i, n))) == (i, n)
    assert shard_of_lock(".autoseg.lock.shard-4-of-4") is None and shard_of_lock("case_001.nii.gz") is None


@pytest.mark.parametrize("convention", ["brats2020", "brats2023"])
def test_regions_write_back_original_labels(convention: str) -> None:
    d = brats.dataset_json_for(convention, 1, "x")
    info = DatasetInfo(d["channel_names"], d["labels"], ".nii.gz", 1, d["regions_class_order"])
    label = make_case(seed=4, convention=convention).label
    assert set(np.unique(label)) <= set(info.label_values)
    back = info.label_from_outputs(info.targets_from_label(label).astype(np.float32))
    np.testing.assert_array_equal(back, label)


def test_dataset_json_errors_name_file_and_fix(tmp_path: Path) -> None:
    p = tmp_path / "dataset.json"
    p.write_text("{not json")
    with pytest.raises(AutosegError, match="dataset.json: malformed JSON"):
        DatasetInfo.load(p)
    p.write_text(json.dumps({"labels": {"background": 0}, "file_ending": ".nii.gz"}))
    with pytest.raises(AutosegError, match="missing field.*channel_names"):
        DatasetInfo.load(p)
    p.write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "wt": [1, 2]}, "file_ending": ".nii.gz"}))
    with pytest.raises(AutosegError, match="regions_class_order"):
        DatasetInfo.load(p)


def test_list_cases_pairs_channels_and_labels(synthetic_home: Path) -> None:
    raw = synthetic_home / "raw" / "Dataset001_Synthetic"
    info = DatasetInfo.load(raw / "dataset.json")
    cases = list_cases(raw, info)
    assert len(cases) == 6 and all(len(c.images) == 4 and c.label.is_file() for c in cases.values())
    assert len(list_cases(raw, info, "Ts")) == 2


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json_atomic(target, {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_image_roundtrip_and_bad_files(tmp_path: Path) -> None:
    geom = Geometry((4, 3, 2), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_image(tmp_path / "x.nii.gz", arr, geom)
    back, g2 = read_image(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(back, arr)
    assert g2.mismatch(geom) is None
    (tmp_path / "bad.nii.gz").write_bytes((tmp_path / "x.nii.gz").read_bytes()[:40])
    with pytest.raises(AutosegError, match="bad.nii.gz: cannot read image"):
        read_image(tmp_path / "bad.nii.gz")


@pytest.mark.slow
def test_stub_or_real_cli_never_prints_traceback(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", "from autoseg.cli.plan import main; main()", "--home", str(tmp_path), "-d", "9"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_read_image_refuses_nan_and_truncated_gzip(tmp_path: Path) -> None:
    """SimpleITK 2.5 reads NaN as 0 and zero-fills truncated .nii.gz; read_image must not."""
    geom = Geometry((8, 6, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    arr = np.random.default_rng(0).random((4, 6, 8)).astype(np.float32)
    arr[1, 2, 3] = np.nan
    write_image(tmp_path / "nan.nii.gz", arr, geom)
    with pytest.raises(AutosegError, match=r"nan.nii.gz: contains 1 NaN/inf voxel"):
        read_image(tmp_path / "nan.nii.gz")
    assert np.isnan(read_image(tmp_path / "nan.nii.gz", allow_nonfinite=True)[0][1, 2, 3])
    arr[1, 2, 3] = 0
    write_image(tmp_path / "ok.nii.gz", arr, geom)
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(AutosegError, match="cut.nii.gz: cannot read image.*truncated or corrupt"):
        read_image(tmp_path / "cut.nii.gz")


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """Temporary files are 0600; the renamed artefact must be readable by others like any new file."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


@pytest.mark.parametrize(("raised", "code", "words"), [(KeyboardInterrupt(), 130, "interrupted while starting"),
                                                       (ModuleNotFoundError("no", name="torch"), 2, "cannot import torch")])
def test_console_scripts_turn_a_failed_start_into_one_line(raised, code, words, monkeypatch, capsys) -> None:
    # The console scripts import the command module inside the launcher, so a Ctrl-C in the first second
    # or a missing dependency is one line, not a traceback from the import machinery.
    import importlib

    from autoseg import cli

    def interrupted(name: str):
        raise raised

    monkeypatch.setattr(importlib, "import_module", interrupted)
    with pytest.raises(SystemExit) as e:
        cli.autoseg_preprocess([])
    err = capsys.readouterr().err
    assert e.value.code == code and words in err and err.count("\n") == 1 and err.startswith("autoseg-preprocess: ")


def test_every_console_script_has_a_launcher_and_a_command_module() -> None:
    import importlib
    from importlib.metadata import entry_points

    from autoseg import cli

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("autoseg-")}
    assert len(scripts) == 11
    for script, target in scripts.items():
        module, attr = target.split(":")
        assert module == "autoseg.cli" and callable(getattr(cli, attr)), script
        name = script.removeprefix("autoseg-")
        module_name = {"import": "import_model"}.get(name, name.replace("-", "_"))   # "import" is a keyword
        assert callable(importlib.import_module(f"autoseg.cli.{module_name}").main)
