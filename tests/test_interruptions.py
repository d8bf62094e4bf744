"""Reliability (issues 8 and 16): kill -9, Ctrl-C and SIGTERM in the middle of preprocessing, prediction,
ensembling and training, then rerun.

Each command runs as a real subprocess on a small synthetic dataset and is stopped once it has started
writing (its first finished file is polled for). The rerun must give what an uninterrupted run gives
(preprocessing and prediction: identical files; training via --resume: the same weights within tolerance),
and no half-written or temporary file may ever be read as a finished one: temporaries of a killed writer are
planted on purpose before the rerun to make sure of it. SIGTERM (what SLURM sends to every process of a job,
and Kubernetes to the main one) must behave like Ctrl-C: one line, exit 143, no worker left running and no
leaked semaphore, and a training epoch that had finished is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def communicate(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """``proc.communicate()``, but a command still running after ``timeout`` s is a failure, never a hang of the
    suite: it and every process of its group (started with ``start_new_session``) are killed first."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(proc.args)} still running after {timeout} s (killed): {(err or '')[-1500:]}")


def finished(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = communicate(proc, timeout)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


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
    communicate(proc, 60)
    return running


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` but hidden ones (temporaries) by its path relative to it, with its hash."""
    files = {str(Path(k).relative_to(root)): v for k, v in snapshot(root).items()}
    return {k: v for k, v in files.items() if not any(part.startswith(".") for part in Path(k).parts)}


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
    assert tree(out) == tree(ref)   # segmentations, probabilities and their provenance records
    final = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
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
    err = communicate(proc, 120)[1]
    assert "Traceback" not in err, err[-2000:]
    if proc.returncode != 0:   # (on a fast machine it may have finished first)
        assert proc.returncode == 130, err[-2000:]
        assert err.rstrip().splitlines()[-1] == ("autoseg-preprocess: interrupted; rerun the same command to continue "
                                                 "where it stopped")
    finished(command("autoseg-preprocess", "--home", home, "-np", "1"))
    assert len(list(out.glob("case_*.json"))) == 4 and not temporaries(out)


# ---------------------------------------------------------------- SIGTERM: as Ctrl-C, exit 143

def live_group_members(pgid: int) -> list[str]:
    """Processes of process group ``pgid`` that are still running (zombies, which a container without an init
    process may never reap, have exited and do not count)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(stat.parent.name)
    return members


def terminate_when(cmd: list[str], ready, whole_group: bool, timeout: float = 240) -> tuple[int, str]:
    """Start ``cmd``, send SIGTERM as soon as ``ready()`` holds (to its whole process group as SLURM does, or to
    the command alone as Kubernetes does); return its exit code and stderr once every process of it is gone."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is None:
        (os.killpg if whole_group else os.kill)(proc.pid, signal.SIGTERM)
    err = communicate(proc, 120)[1]    # (stderr closes when the last process holding it is gone)
    deadline = time.monotonic() + 10
    while live_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not live_group_members(proc.pid), f"processes left running: {live_group_members(proc.pid)}"
    return proc.returncode, err


def expect_terminated(code: int, err: str, prog: str, hint: str = "rerun the same command to continue where it "
                                                                     "stopped") -> None:
    """Exit 143 with the one line, or exit 0 when the command had finished before the signal came."""
    assert "Traceback" not in err and "leaked" not in err and "Error" not in err, err[-2000:]
    if code != 0:
        assert code == 143, err[-2000:]
        assert err.rstrip().splitlines()[-1] == f"{prog}: terminated (SIGTERM); {hint}", err[-2000:]


@pytest.fixture(scope="module")
def preprocessed_ref(planned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted preprocessing of ``planned``."""
    ref = tmp_path_factory.mktemp("pre") / "home"
    shutil.copytree(planned, ref)
    in_process(preprocess_main, "--home", ref, "-np", "1")
    return ref


@pytest.mark.parametrize("whole_group", [True, False], ids=["group (SLURM)", "main process (Kubernetes)"])
def test_sigterm_during_parallel_preprocessing_is_one_line_and_rerun_equals_an_uninterrupted_run(
        planned: Path, preprocessed_ref: Path, tmp_path: Path, whole_group: bool) -> None:
    home = tmp_path / "home"
    shutil.copytree(planned, home)
    out = DatasetPaths(home, DS).config_dir("3d_fullres")
    code, err = terminate_when(command("autoseg-preprocess", "--home", home, "-np", "2"),
                               lambda: out.is_dir() and any(out.glob("case_*.json")), whole_group)
    expect_terminated(code, err, "autoseg-preprocess")
    finished(command("autoseg-preprocess", "--home", home, "-np", "2"))
    assert not temporaries(out)
    mine = {Path(k).relative_to(home): v for k, v in snapshot(DatasetPaths(home, DS).preprocessed).items()}
    theirs = {Path(k).relative_to(preprocessed_ref): v
              for k, v in snapshot(DatasetPaths(preprocessed_ref, DS).preprocessed).items()}
    assert mine == theirs


def worker_pids(parent: int) -> list[int]:
    """The spawn worker processes (not the resource tracker) whose parent is ``parent``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def test_a_preprocessing_worker_killed_outright_fails_its_case_named_and_the_others_finish(
        planned: Path, preprocessed_ref: Path, tmp_path: Path) -> None:
    """SIGKILL to one worker (what the out-of-memory killer does) while it preprocesses a case: that case fails
    with one line naming it, the others are written, exit 2; the rerun completes it. multiprocessing's pool lost
    the worker's case and waited for it forever (a hang, here a timeout)."""
    home = tmp_path / "home"
    shutil.copytree(planned, home)
    out = DatasetPaths(home, DS).config_dir("3d_fullres")
    proc = subprocess.Popen(command("autoseg-preprocess", "--home", home, "-np", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, killed = time.monotonic() + 120, None
    while proc.poll() is None and time.monotonic() < deadline and killed is None:
        if out.is_dir() and any(out.glob("case_*.json")) and (pids := worker_pids(proc.pid)):
            os.kill(pids[0], signal.SIGKILL)   # it holds a case: two workers, two cases still to do
            killed = pids[0]
        time.sleep(0.005)
    err = communicate(proc, 120)[1]
    assert killed is not None and "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("autoseg-preprocess")]
    assert proc.returncode == 2 and len(lines) == 1, err[-2000:]
    assert "worker process killed by SIGKILL (often the out-of-memory killer) while preprocessing this case" \
        in lines[0] and str(home / "raw" / DS / "imagesTr" / "case_") in lines[0], lines
    assert len(list(out.glob("case_*.json"))) == 3, "the other cases are finished"
    finished(command("autoseg-preprocess", "--home", home, "-np", "2"))
    mine = {Path(k).relative_to(home): v for k, v in snapshot(DatasetPaths(home, DS).preprocessed).items()}
    theirs = {Path(k).relative_to(preprocessed_ref): v
              for k, v in snapshot(DatasetPaths(preprocessed_ref, DS).preprocessed).items()}
    assert mine == theirs


def test_sigterm_during_prediction_and_ensembling_then_rerun_equals_an_uninterrupted_run(
        predicted: tuple[Path, Path], tmp_path: Path) -> None:
    home, ref = predicted
    out = tmp_path / "out"
    cmd = command("autoseg-predict", "-i", home / "raw" / DS / "imagesTs", "-o", out, "--home", home, *PREDICT_ARGS,
                  "--save-probabilities")
    code, err = terminate_when(cmd, lambda: out.is_dir() and any(out.glob("case_*.nii.gz")), whole_group=False)
    expect_terminated(code, err, "autoseg-predict")
    finished(cmd)
    assert tree(out) == tree(ref)
    ens, ens_ref = tmp_path / "ens", tmp_path / "ens_ref"
    finished(command("autoseg-ensemble", "-i", out, ref, "-o", ens_ref))
    cmd = command("autoseg-ensemble", "-i", out, ref, "-o", ens)
    code, err = terminate_when(cmd, lambda: ens.is_dir() and any(ens.glob("case_*.nii.gz")), whole_group=True)
    expect_terminated(code, err, "autoseg-ensemble")
    finished(cmd)
    assert tree(ens) == tree(ens_ref) and not temporaries(ens)


RESUME_HINT = "rerun the same command with --resume to continue from the last finished epoch"


@pytest.fixture(scope="module")
def trained_ref(planned: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A preprocessed data root, and a copy of it with fold 0 trained without interruption (``TRAIN``)."""
    root = tmp_path_factory.mktemp("train")
    home, ref = root / "home", root / "ref"
    shutil.copytree(planned, home)
    in_process(preprocess_main, "--home", home, "-np", "1")
    shutil.copytree(home, ref)
    in_process(train_main, "3d_fullres", "fold0", "--home", ref, *TRAIN)
    return home, ref


def test_sigterm_during_training_then_resume_matches_an_uninterrupted_run(trained_ref: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    """SIGTERM to the trainer and its data-loader workers during epoch 1: exit 143 with the --resume hint, no
    worker left, checkpoint_latest.pt of epoch 0 intact; --resume ends with the uninterrupted run's weights."""
    home = tmp_path / "home"
    shutil.copytree(trained_ref[0], home)
    fold = DatasetPaths(home, DS).fold_dir("3d_fullres", 0)
    train = [*TRAIN[:TRAIN.index("--workers")], "--workers", "1", *TRAIN[TRAIN.index("--workers") + 2:]]
    code, err = terminate_when(command("autoseg-train", "3d_fullres", "fold0", "--home", home, *train),
                               (fold / "checkpoint_latest.pt").is_file, whole_group=True)
    assert code == 143, err[-2000:]
    expect_terminated(code, err, "autoseg-train", RESUME_HINT)
    assert torch.load(fold / "checkpoint_latest.pt", weights_only=True)["epoch"] >= 1
    in_process(train_main, "3d_fullres", "fold0", "--home", home, *train, "--resume")
    a = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    b = torch.load(DatasetPaths(trained_ref[1], DS).fold_dir("3d_fullres", 0) / "checkpoint_final.pt",
                   weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k, v in b["network_state"].items():
        torch.testing.assert_close(a["network_state"][k], v, rtol=1e-4, atol=1e-5, msg=k)


SIGTERM_WHILE_SAVING = """
import os, signal, sys, time
import autoseg.training.trainer as trainer
from autoseg.cli import autoseg_train
real = trainer.save_checkpoint
def save(path, payload):
    if payload["epoch"] == 2 and path.name == "checkpoint_latest.pt":   # epoch 1 has just finished
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)            # the signal has arrived; the save must still complete
    real(path, payload)
trainer.save_checkpoint = save
autoseg_train(sys.argv[1:])
"""


def test_sigterm_while_a_finished_epoch_is_saved_waits_for_its_checkpoint(trained_ref: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    """A finished epoch is never lost: SIGTERM during its checkpoint's writing takes effect once the checkpoint
    is on disk (it used to end the process with the previous epoch's checkpoint)."""
    home = tmp_path / "home"
    shutil.copytree(trained_ref[0], home)
    fold = DatasetPaths(home, DS).fold_dir("3d_fullres", 0)
    r = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_SAVING, "3d_fullres", "fold0", "--home", str(home),
                        *TRAIN], capture_output=True, text=True, timeout=240)
    expect_terminated(r.returncode, r.stderr, "autoseg-train", RESUME_HINT)
    assert r.returncode == 143
    assert torch.load(fold / "checkpoint_latest.pt", weights_only=True)["epoch"] == 2
    assert "epoch 1:" in (fold / "log.txt").read_text() and not (fold / "checkpoint_final.pt").exists()
    assert not temporaries(fold)


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (Linux: the SigCgt mask in /proc/PID/status)."""
    try:
        caught = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def test_sigterm_while_a_command_starts_is_one_line(tmp_path: Path) -> None:
    """SIGTERM during the second of imports before a command runs: one line, exit 143, no traceback. The launcher
    installs the handler first thing; the signal is sent as soon as /proc shows it installed."""
    proc = subprocess.Popen(command("autoseg-train", "3d_fullres", "fold0", "--home", tmp_path), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not catches_sigterm(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    err = communicate(proc, 60)[1]
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] in ("autoseg-train: terminated (SIGTERM) while starting; nothing was written",
                                            f"autoseg-train: terminated (SIGTERM); {RESUME_HINT}"), err


# ---------------------------------------------------------------- SIGTERM at a random moment (issue 16 harness)

ROUNDS = int(os.environ.get("AUTOSEG_SIGTERM_ROUNDS", "1"))   # more rounds: AUTOSEG_SIGTERM_ROUNDS=10
SEED = int(os.environ.get("AUTOSEG_SIGTERM_SEED", "16"))


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    finished(cmd)
    return time.monotonic() - start


def sigterm_at(cmd: list[str], delay: float, whole_group: bool, prog: str, hint: str) -> int:
    """Run ``cmd`` and send it SIGTERM ``delay`` s after its start; it must end as a stopped command does."""
    start = time.monotonic()
    code, err = terminate_when(cmd, lambda: time.monotonic() - start >= delay, whole_group)
    assert "Traceback" not in err and "leaked" not in err and "Error" not in err, err[-2000:]
    last = (err.strip().splitlines() or [""])[-1]
    if code == 143:
        assert last in (f"{prog}: terminated (SIGTERM); {hint}",
                        f"{prog}: terminated (SIGTERM) while starting; nothing was written"), err[-2000:]
    else:   # 0: it had finished; killed by the signal: before Python could install the handler, or after the
        assert code in (0, -signal.SIGTERM), err[-2000:]   # command was done and its handler gone (exiting)
    return code


def random_moments(name: str, duration: float) -> list[tuple[float, bool]]:
    """``ROUNDS`` (delay, whole group?) pairs over the length of an uninterrupted run, reproducible per command."""
    rng = random.Random(f"{SEED}-{name}")
    return [(rng.uniform(0.0, duration), rng.random() < 0.5) for _ in range(ROUNDS)]


@dataclass
class LongCommand:
    """A long command for the harness: how to start it on a target (a data root copied from ``source``, or an
    output folder), how a user reruns it, and what its result is."""

    prog: str
    start: Callable[[Path], list[str]]
    result: Callable[[Path], Any]
    source: Path | None = None
    resume: bool = False

    def rerun(self, target: Path) -> list[str]:
        return [*self.start(target), "--resume"] if self.resume else self.start(target)

    def prepare(self, target: Path) -> Path:
        if self.source is not None:
            shutil.copytree(self.source, target)
        return target


def final_weights(home: Path) -> dict[str, Any]:
    ckpt = torch.load(DatasetPaths(home, DS).fold_dir("3d_fullres", 0) / "checkpoint_final.pt", weights_only=True)
    return {"epoch": ckpt["epoch"], "weights": ckpt["network_state"], "loss": ckpt["log"]["train_loss"]}


def long_command(name: str, planned: Path, preprocessed: Path, predicted: tuple[Path, Path], tmp: Path
                 ) -> LongCommand:
    home, pred = predicted
    if name == "preprocess":
        return LongCommand("autoseg-preprocess", lambda h: command("autoseg-preprocess", "--home", h, "-np", "2"),
                           lambda h: tree(DatasetPaths(h, DS).preprocessed), planned)
    if name == "train --resume":
        return LongCommand("autoseg-train", lambda h: command("autoseg-train", "3d_fullres", "fold0", *TRAIN, "--home",
                                                              h), final_weights, preprocessed, resume=True)
    if name == "predict":
        return LongCommand("autoseg-predict", lambda out: command(
            "autoseg-predict", "-i", home / "raw" / DS / "imagesTs", "-o", out, "--home", home, *PREDICT_ARGS,
            "--save-probabilities"), tree)
    shutil.copytree(pred, tmp / "pred2")
    return LongCommand("autoseg-ensemble", lambda out: command("autoseg-ensemble", "-i", pred, tmp / "pred2", "-o", out,
                                                               "--save-probabilities"), tree)


@pytest.mark.parametrize("name", ["preprocess", "train --resume", "predict", "ensemble"])
def test_sigterm_at_a_random_moment_then_rerun_gives_the_uninterrupted_result(
        name: str, planned: Path, preprocessed_ref: Path, predicted: tuple[Path, Path], tmp_path: Path) -> None:
    """The harness: each long command runs once uninterrupted (timed), then ``ROUNDS`` times on a fresh copy with
    SIGTERM at a random moment of that length (to the command alone or its whole process group), then once more as
    a user would rerun it (``--resume`` for training); the result must equal the uninterrupted one: byte for byte,
    training within float tolerance. The moments are printed, and reproducible from AUTOSEG_SIGTERM_SEED."""
    long = long_command(name, planned, preprocessed_ref, predicted, tmp_path)
    hint = RESUME_HINT if long.resume else "rerun the same command to continue where it stopped"
    ref = long.prepare(tmp_path / "ref")
    duration = timed(long.start(ref))
    expected = long.result(ref)
    for i, (delay, whole_group) in enumerate(random_moments(name, duration)):
        target = long.prepare(tmp_path / f"run{i}")
        code = sigterm_at(long.start(target), delay, whole_group, long.prog, hint)
        print(f"{name}: SIGTERM to the {'process group' if whole_group else 'command'} at {delay:.2f} s of "
              f"{duration:.2f} s: exit {code}")
        finished(long.rerun(target))
        got = long.result(target)
        if not long.resume:
            assert got == expected, f"SIGTERM at {delay:.2f} s: {sorted(set(got.items()) ^ set(expected.items()))}"
            continue
        assert got["epoch"] == expected["epoch"] and np.allclose(got["loss"], expected["loss"], rtol=1e-4)
        for k, v in expected["weights"].items():
            torch.testing.assert_close(got["weights"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_a_second_trainer_of_a_fold_is_refused_naming_the_first_and_a_killed_ones_lock_is_taken_over(
        trained_ref: tuple[Path, Path], tmp_path: Path) -> None:
    """Two autoseg-train of one fold used to run at once (every log line twice, both writing the checkpoints): the
    second now stops at once with one line naming the first (host, pid, since), exit 2. The first killed outright
    (SIGKILL: no cleanup) leaves its lock behind; --resume takes it over, finishes and releases it."""
    import socket
    home = tmp_path / "home"
    shutil.copytree(trained_ref[0], home)
    fold = DatasetPaths(home, DS).fold_dir("3d_fullres", 0)
    long = [*TRAIN[:TRAIN.index("--epochs")], "--epochs", "1000", *TRAIN[TRAIN.index("--epochs") + 2:]]
    first = subprocess.Popen(command("autoseg-train", "3d_fullres", "fold0", "--home", home, *long),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (fold / "checkpoint_latest.pt").is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None and (fold / ".autoseg.lock").is_file()
        second = subprocess.Popen(command("autoseg-train", "3d_fullres", "fold0", "--home", home, *TRAIN,
                                          "--resume"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        err = communicate(second, 120)[1]
        lines = err.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, err[-2000:]
        assert lines[0].startswith(f"autoseg-train: error: {fold}: being written by another training of this fold "
                                   f"(autoseg-train, pid {first.pid} on host {socket.gethostname()}, since "), lines
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert (fold / ".autoseg.lock").is_file()        # left behind by the killed trainer
    done = torch.load(fold / "checkpoint_latest.pt", weights_only=True)["epoch"]
    resume = [*TRAIN[:TRAIN.index("--epochs")], "--epochs", str(done + 1), *TRAIN[TRAIN.index("--epochs") + 2:]]
    finished(command("autoseg-train", "3d_fullres", "fold0", "--home", home, *resume, "--resume"))
    assert not (fold / ".autoseg.lock").exists()
    assert torch.load(fold / "checkpoint_final.pt", weights_only=True)["epoch"] == done + 1
