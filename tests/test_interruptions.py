"""Reliability (issue 8): kill -9 in the middle of preprocessing, prediction and training, then rerun.

Each command runs as a real subprocess on a small synthetic dataset and is killed with SIGKILL once it has
started writing (its first finished file is polled for). The rerun must give what an uninterrupted run gives
(preprocessing and prediction: identical files; training via --resume: the same weights within tolerance),
and no half-written or temporary file may ever be read as a finished one: temporaries of a killed writer are
planted on purpose before the rerun to make sure of it.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.cli.preprocess import main as preprocess_main
from autoseg.cli.train import main as train_main
from autoseg.paths import DatasetPaths
from autoseg.synthetic import write_raw_dataset

sys.path.insert(0, str(Path(__file__).parent))
from test_reliability import DS, PLAN_ARGS, PREDICT_ARGS, fold_checkpoint, snapshot  # noqa: E402

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def command(name: str, *args) -> list[str]:
    return [str(BIN / name), *(str(a) for a in args)]


def finished(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return r


def in_process(main, *argv) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 0


def kill_when(cmd: list[str], ready, timeout: float = 240) -> bool:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; return whether it was still running then."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        running = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)   # the command and any worker it started
    except ProcessLookupError:
        running = False
    proc.wait()
    return running


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if ".tmp" in p.name)


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with 4 training and 3 test cases, planned tiny."""
    home = tmp_path_factory.mktemp("kill") / "home"
    write_raw_dataset(home / "raw" / DS, n_train=4, n_test=3, shape=(32, 40, 40), seed=1)
    finished(command("autoseg-plan", "--home", home, *PLAN_ARGS))
    return home


def test_kill_during_preprocessing_then_rerun_equals_an_uninterrupted_run(planned: Path, tmp_path: Path) -> None:
    ref, home = tmp_path / "ref", tmp_path / "home"
    shutil.copytree(planned, ref)
    shutil.copytree(planned, home)
    finished(command("autoseg-preprocess", "--home", ref, "-np", "1"))
    out = DatasetPaths(home, DS).config_dir("3d_fullres")
    kill_when(command("autoseg-preprocess", "--home", home, "-np", "1"),
              lambda: out.is_dir() and any(out.glob("case_*.json")))
    # what a kill at other moments leaves: a temporary half-written array, and a case without its marker
    (out / ".case_003_data.1a2b3c4d.tmp.npy").write_bytes(b"\x93NUMPY half")
    for p in out.glob("case_000*.json"):
        p.unlink()
    finished(command("autoseg-preprocess", "--home", home, "-np", "1"))
    assert not temporaries(out)
    mine = {Path(k).relative_to(home): v for k, v in snapshot(DatasetPaths(home, DS).preprocessed).items()}
    theirs = {Path(k).relative_to(ref): v for k, v in snapshot(DatasetPaths(ref, DS).preprocessed).items()}
    assert mine == theirs


@pytest.fixture(scope="module")
def predicted(planned: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The planned root with an (untrained) fold 0, and an uninterrupted prediction of imagesTs."""
    root = tmp_path_factory.mktemp("pred")
    home = root / "home"
    shutil.copytree(planned, home)
    fold_checkpoint(DatasetPaths(home, DS))
    finished(command("autoseg-predict", "-i", home / "raw" / DS / "imagesTs", "-o", root / "ref", "--home", home,
                     *PREDICT_ARGS, "--save-probabilities"))
    return home, root / "ref"


def test_kill_during_prediction_then_rerun_equals_an_uninterrupted_run(predicted: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    home, ref = predicted
    out = tmp_path / "out"
    cmd = command("autoseg-predict", "-i", home / "raw" / DS / "imagesTs", "-o", out, "--home", home, *PREDICT_ARGS,
                  "--save-probabilities")
    kill_when(cmd, lambda: out.is_dir() and any(out.glob("case_*.nii.gz")))
    (out / ".case_006.5e6f7a8b.tmp.nii.gz").write_bytes(b"\x1f\x8b half")   # a killed writer's leftovers
    (out / ".case_006.9c0d1e2f.tmp.npz").write_bytes(b"PK half")
    finished(cmd)
    final = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert final == sorted(p.name for p in ref.iterdir())
    for name in final:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    # leftovers are never read as results: evaluation and ensembling see only the finished cases
    ev = subprocess.run(command("autoseg-evaluate", "-p", out, "-r", home / "raw" / DS / "labelsTs", "--home", home,
                                "-o", tmp_path / "ev"), capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0 and "3 case(s) evaluated" in ev.stderr, ev.stderr[-1500:]
    en = subprocess.run(command("autoseg-ensemble", "-i", out, ref, "-o", tmp_path / "ens"), capture_output=True,
                        text=True, timeout=120)
    assert en.returncode == 0, en.stderr[-1500:]
    assert sorted(p.name for p in (tmp_path / "ens").glob("*.nii.gz")) == [n for n in final if n.endswith(".nii.gz")]


TRAIN = ["--epochs", "3", "--iters-per-epoch", "1", "--val-iters", "0", "--workers", "0", "--device", "cpu",
         "--no-validation"]


def test_kill_during_training_then_resume_matches_an_uninterrupted_run(planned: Path, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    ref, home = tmp_path / "ref", tmp_path / "home"
    shutil.copytree(planned, home)
    in_process(preprocess_main, "--home", home, "-np", "1")   # (in this process where no kill is needed: faster)
    shutil.copytree(home, ref)
    in_process(train_main, "3d_fullres", "fold0", "--home", ref, *TRAIN)
    fold = DatasetPaths(home, DS).fold_dir("3d_fullres", 0)
    log = fold / "log.txt"
    latest = fold / "checkpoint_latest.pt"       # epoch 0 saved: kill it during epoch 1
    ran = kill_when(command("autoseg-train", "3d_fullres", "fold0", "--home", home, *TRAIN), latest.is_file)
    assert ran and not (fold / "checkpoint_final.pt").exists()
    (fold / ".checkpoint_latest.0a1b2c3d.tmp.pt").write_bytes(b"PK half")   # a killed torch.save
    in_process(train_main, "3d_fullres", "fold0", "--home", home, *TRAIN, "--resume")
    assert not temporaries(fold), "the resumed run clears the killed run's temporaries"
    a = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    b = torch.load(DatasetPaths(ref, DS).fold_dir("3d_fullres", 0) / "checkpoint_final.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and "epoch 0:" in log.read_text()
    for k, v in b["network_state"].items():
        torch.testing.assert_close(a["network_state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert np.allclose(a["log"]["train_loss"], b["log"]["train_loss"], rtol=1e-4)

    # a full disk while saving the next checkpoint: exit 2, one line, the last good checkpoint intact
    before = snapshot(fold)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train_main(["3d_fullres", "fold0", "--home", str(home), *TRAIN[2:], "--epochs", "4", "--resume"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("autoseg-train")]
    assert e.value.code == 2 and "Traceback" not in err and len(lines) == 1, err[-1500:]
    assert "checkpoint_latest.pt" in lines[0] and "no space left" in lines[0].lower(), lines
    after = snapshot(fold)
    for name in ("checkpoint_latest.pt", "checkpoint_final.pt"):
        assert after[str(fold / name)] == before[str(fold / name)], name
    assert not temporaries(fold)


def test_ctrl_c_during_parallel_preprocessing_is_one_line_and_rerun_finishes(planned: Path, tmp_path: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole process group, workers included: exit 130, one line, no
    traceback from any worker, and the rerun completes."""
    home = tmp_path / "home"
    shutil.copytree(planned, home)
    out = DatasetPaths(home, DS).config_dir("3d_fullres")
    proc = subprocess.Popen(command("autoseg-preprocess", "--home", home, "-np", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (out.is_dir() and any(out.glob("case_*.json"))):
        time.sleep(0.005)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert "Traceback" not in err, err[-2000:]
    if proc.returncode != 0:   # (on a fast machine it may have finished first)
        assert proc.returncode == 130, err[-2000:]
        assert err.rstrip().splitlines()[-1] == ("autoseg-preprocess: interrupted; rerun the same command to continue "
                                                 "where it stopped")
    finished(command("autoseg-preprocess", "--home", home, "-np", "1"))
    assert len(list(out.glob("case_*.json"))) == 4 and not temporaries(out)
