"""autoseg-train --logger: the numbers of log.txt and the progress picture reach TensorBoard (real, when installed)
and W&B / MLflow (fake modules in sys.modules, through the trainer's real code path); a missing extra is one
line while the options are parsed; a tracking service that fails never stops the training."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _training_fixtures import build_home, copy_home, tiny_plan  # noqa: E402

from autoseg.checkpoint import load_checkpoint  # noqa: E402
from autoseg.cli.train import main as train_main  # noqa: E402
from autoseg.training import TrainOptions, train_fold  # noqa: E402
from autoseg.training.loggers import Tracker, epoch_scalars, open_tracker  # noqa: E402
from autoseg.training.progress import TrainingLog  # noqa: E402

FAST = dict(iters_per_epoch=1, val_iters=1, workers=0, progress=False, validate=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return build_home(tmp_path_factory.mktemp("loggers") / "home", [tiny_plan()], n_cases=3)


@pytest.fixture
def paths(prepared, tmp_path):
    return copy_home(prepared, tmp_path / "home")


def _logged(fold_dir: Path) -> TrainingLog:
    return TrainingLog.from_dict(load_checkpoint(fold_dir / "checkpoint_final.pt")["log"])


@pytest.mark.parametrize("name", ["wandb", "mlflow", "tensorboard"])
def test_a_missing_extra_is_one_line_before_any_work(name, paths, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))
    with pytest.raises(SystemExit) as e:
        train_main(["3d_fullres", "fold0", "--home", str(paths.root), "--logger", name])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1, lines
    assert f"needs the {name} package" in lines[0] and f"pip install 'autoseg[{name}]'" in lines[0]
    assert not paths.fold_dir("3d_fullres", 0).exists()


def test_an_unknown_logger_is_refused_while_parsing(paths, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["3d_fullres", "fold0", "--home", str(paths.root), "--logger", "comet"])
    assert e.value.code == 2 and "use one of none, tensorboard, wandb, mlflow" in capsys.readouterr().err


def _fake_module(name: str, monkeypatch, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


class FakeWandbRun:
    def __init__(self, calls: list, **init) -> None:
        self.calls = calls
        calls.append(("init", init))

    def log(self, data: dict, step: int) -> None:
        self.calls.append(("log", step, data))

    def finish(self) -> None:
        self.calls.append(("finish",))


@pytest.mark.slow
def test_wandb_gets_every_epoch_of_log_txt_and_a_resumed_run_continues_the_same_run(paths, monkeypatch):
    calls: list = []
    ids = iter(["run-a", "run-b"])
    _fake_module("wandb", monkeypatch, init=lambda **kw: FakeWandbRun(calls, **kw),
                 Image=lambda path: ("image", Path(path).name), util=types.SimpleNamespace(generate_id=lambda: next(ids)))
    fold_dir = train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=2, logger="wandb", **FAST))
    log = _logged(fold_dir)
    init = calls[0][1]
    assert init["id"] == "run-a" and init["resume"] == "allow" and init["name"] == "Dataset001_Synthetic 3d_fullres fold 0"
    assert init["config"]["options"]["logger"] == "wandb" and init["config"]["plan"]["patch_size"] == [16, 16, 16]
    logged = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logged] == [0, 1] and calls[-1] == ("finish",)
    for _, step, data in logged:
        scalars = {k: v for k, v in data.items() if k != "progress"}
        assert scalars == pytest.approx(epoch_scalars(log, step), nan_ok=True)
        assert data["progress"] == ("image", "progress.png")   # the first and the last epoch carry the picture
    assert {"loss/train", "loss/val", "lr", "epoch_time_s", "pseudo_dice/EMA mean"} <= set(logged[0][2])
    assert {f"pseudo_dice/{n}" for n in log.region_names} <= set(logged[0][2])
    assert json.loads((fold_dir / "tracking.json").read_text()) == {"wandb": "run-a"}

    calls.clear()
    train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=3, resume=True, logger="wandb", **FAST))
    assert calls[0][1]["id"] == "run-a" and [c[1] for c in calls if c[0] == "log"] == [2]


@pytest.mark.slow
def test_mlflow_gets_metrics_per_epoch_parameters_and_the_picture(paths, monkeypatch):
    calls: list = []

    class Client:
        def get_experiment_by_name(self, name):
            calls.append(("experiment", name))

        def create_experiment(self, name):
            return "7"

        def create_run(self, experiment_id, run_name):
            calls.append(("run", experiment_id, run_name))
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

        def log_batch(self, run_id, metrics=(), params=()):
            calls.append(("batch", run_id, list(metrics), list(params)))

        def log_artifact(self, run_id, path):
            calls.append(("artifact", Path(path).name))

        def set_terminated(self, run_id):
            calls.append(("end", run_id))

    metric = lambda key, value, timestamp, step: (key, value, step)  # noqa: E731
    param = lambda key, value: (key, value)  # noqa: E731
    _fake_module("mlflow", monkeypatch)
    _fake_module("mlflow.tracking", monkeypatch, MlflowClient=Client)
    _fake_module("mlflow.entities", monkeypatch, Metric=metric, Param=param)
    fold_dir = train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=2, logger="mlflow", **FAST))
    log = _logged(fold_dir)
    assert calls[:2] == [("experiment", "autoseg"), ("run", "7", "Dataset001_Synthetic 3d_fullres fold 0")]
    params = dict(p for c in calls if c[0] == "batch" for p in c[3])
    assert params["options.logger"] == "mlflow" and params["plan.patch_size"] == "[16, 16, 16]"
    metrics = [m for c in calls if c[0] == "batch" for m in c[2]]
    for epoch in (0, 1):
        got = {k: v for k, v, step in metrics if step == epoch}
        assert got == pytest.approx(epoch_scalars(log, epoch), nan_ok=True)
    assert [c for c in calls if c[0] == "artifact"] == [("artifact", "progress.png")] * 2 and calls[-1] == ("end", "r1")


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_log_and_the_picture(paths):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    fold_dir = train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=2, logger="tensorboard", **FAST))
    log = _logged(fold_dir)
    events = EventAccumulator(str(fold_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for key, value in epoch_scalars(log, 1).items():
        got = events.Scalars(key)
        assert [e.step for e in got] == [0, 1]
        assert got[1].value == pytest.approx(value, rel=1e-6, nan_ok=True)
    pictures = events.Images("progress")
    assert [p.step for p in pictures] == [0, 1] and pictures[0].encoded_image_string.startswith(b"\x89PNG")


def test_a_failing_service_costs_one_line_and_training_goes_on(tmp_path, capsys):
    class Broken:
        def log_epoch(self, epoch, scalars, picture):
            raise ConnectionError("api.wandb.ai unreachable")

        def close(self):
            raise AssertionError("not called once the tracker gave up")

    log = TrainingLog(["a"])
    log.add(1.0, 0.9, [0.5], 0.01, 2.0)
    log.add(0.8, 0.7, [0.6], 0.009, 2.0)
    tracker = Tracker("wandb", Broken(), epochs=2)
    tracker.log_epoch(log, 0, tmp_path / "progress.png")
    tracker.log_epoch(log, 1, tmp_path / "progress.png")
    tracker.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--logger wandb failed (ConnectionError" in err[0] and "training goes on" in err[0]


def test_no_logger_is_a_no_op_and_needs_no_package(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a: None)
    with open_tracker("none", tmp_path, "run", {}, 1) as tracker:
        assert tracker.backend is None
        tracker.log_epoch(TrainingLog(["a"]), 0, tmp_path / "progress.png")   # nothing to log, nothing raised
    assert not any(tmp_path.iterdir())
