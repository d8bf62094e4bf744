"""Experiment tracking: what log.txt and progress.png say each epoch, sent to TensorBoard, Weights & Biases or
MLflow (``autoseg-train --logger``). Each is an optional extra, imported only when asked for.

The trainer holds one :class:`Tracker` (from :func:`open_tracker`) and calls :meth:`Tracker.log_epoch` once per
finished epoch: train and val loss, pseudo-Dice per region and its EMA, learning rate, epoch time, and every
:data:`PICTURE_EVERY` epochs (and the last) the progress picture. The step is the epoch, so a resumed run
continues its curves; W&B and MLflow runs are resumed too (their run id is kept in the fold folder's
``tracking.json``). A tracking service that fails mid-run costs one line on stderr, never the training.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Protocol

from autoseg.errors import fail
from autoseg.io import read_json, write_json_atomic
from autoseg.training.progress import TrainingLog

LOGGERS = ("none", "tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
PICTURE_EVERY = 10
RUN_IDS = "tracking.json"


def missing_package(name: str) -> str | None:
    """The one-line problem when ``--logger name`` cannot work here (unknown, or its package not installed)."""
    if name not in LOGGERS:
        return f"--logger {name} is not known; use one of {', '.join(LOGGERS)}"
    package = PACKAGES.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        return (f"--logger {name} needs the {package} package, which is not installed; "
                f"pip install 'autoseg[{name}]' (or pip install {package}), or train without --logger")
    return None


def check_logger(name: str) -> str:
    """argparse ``type`` of ``--logger``: refused while parsing when its extra is missing."""
    import argparse
    if (problem := missing_package(name)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return name


def epoch_scalars(log: TrainingLog, epoch: int) -> dict[str, float]:
    """The numbers of log.txt's line for ``epoch`` (0-based), named for the dashboards."""
    scalars = {"loss/train": log.train_loss[epoch], "loss/val": log.val_loss[epoch],
               "pseudo_dice/EMA mean": log.ema_pseudo_dice[epoch], "lr": log.lr[epoch],
               "epoch_time_s": log.epoch_time[epoch]}
    for name, dice in zip(log.region_names, log.pseudo_dice[epoch]):
        scalars[f"pseudo_dice/{name}"] = dice
    return {k: float(v) for k, v in scalars.items()}


class Backend(Protocol):
    """One tracking service: scalars and, when given, the progress picture of an epoch; closed at the end."""

    def log_epoch(self, epoch: int, scalars: dict[str, float], picture: Path | None) -> None: ...

    def close(self) -> None: ...


class Tracker:
    """The trainer's handle: turns an epoch of the TrainingLog into scalars for the backend (none: no-op)."""

    def __init__(self, name: str, backend: Backend | None, epochs: int) -> None:
        self.name, self.backend, self.epochs = name, backend, epochs

    def log_epoch(self, log: TrainingLog, epoch: int, picture: Path) -> None:
        if self.backend is None:
            return
        show = epoch % PICTURE_EVERY == 0 or epoch == self.epochs - 1
        try:
            self.backend.log_epoch(epoch, epoch_scalars(log, epoch), picture if show and picture.is_file() else None)
        except Exception as e:  # noqa: BLE001 - a tracking service's failure must not end a training run
            print(f"autoseg-train: --logger {self.name} failed ({type(e).__name__}: {str(e)[:120]}); training goes "
                  "on, log.txt and progress.png as usual", file=sys.stderr)
            self.backend = None

    def close(self) -> None:
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.close()
            self.backend = None


@contextlib.contextmanager
def open_tracker(name: str, fold_dir: Path, run_name: str, config: dict[str, Any], epochs: int) -> Iterator[Tracker]:
    """A :class:`Tracker` for ``--logger name`` writing next to ``fold_dir``; closed when the block ends."""
    if (problem := missing_package(name)) is not None:
        raise fail(None, problem)
    backends = {"tensorboard": TensorBoardBackend, "wandb": WandbBackend, "mlflow": MlflowBackend}
    backend = None
    if name != "none":
        try:
            backend = backends[name](fold_dir, run_name, plain(config))
        except Exception as e:  # noqa: BLE001 - a tracking service that cannot start must not stop the training
            print(f"autoseg-train: --logger {name} could not start ({type(e).__name__}: {str(e)[:120]}); training "
                  "without it, log.txt and progress.png as usual", file=sys.stderr)
    tracker = Tracker(name, backend, epochs)
    try:
        yield tracker
    finally:
        tracker.close()


def plain(obj: Any) -> Any:
    """Dataclasses, paths and tuples as JSON types (what the services store as run configuration)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj if obj is None or isinstance(obj, (bool, int, float, str)) else str(obj)


def _read_picture(path: Path) -> Any:
    """progress.png as an (H, W, 3) float array in [0, 1]."""
    from matplotlib.image import imread
    return imread(path)[..., :3]


def _run_id(fold_dir: Path, service: str) -> str | None:
    path = fold_dir / RUN_IDS
    ids = read_json(path) if path.is_file() else {}
    return ids.get(service) if isinstance(ids, dict) else None


def _keep_run_id(fold_dir: Path, service: str, run_id: str) -> None:
    path = fold_dir / RUN_IDS
    ids = read_json(path) if path.is_file() else {}
    write_json_atomic(path, {**(ids if isinstance(ids, dict) else {}), service: run_id})


class TensorBoardBackend:
    """Event files in ``FOLD/tensorboard/`` (``tensorboard --logdir results/``), via torch's SummaryWriter."""

    def __init__(self, fold_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(fold_dir / "tensorboard"))
        self.writer.add_text("run", f"{run_name}\n\n```\n{json.dumps(config, indent=2)}\n```")

    def log_epoch(self, epoch: int, scalars: dict[str, float], picture: Path | None) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, epoch)
        if picture is not None:
            self.writer.add_image("progress", _read_picture(picture), epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    """A W&B run (project $WANDB_PROJECT, else ``autoseg``; offline with WANDB_MODE=offline), files in FOLD/wandb/."""

    def __init__(self, fold_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        import wandb
        self.wandb = wandb
        run_id = _run_id(fold_dir, "wandb") or wandb.util.generate_id()
        fold_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "autoseg", name=run_name, id=run_id,
                              resume="allow", config=config, dir=str(fold_dir))
        _keep_run_id(fold_dir, "wandb", run_id)

    def log_epoch(self, epoch: int, scalars: dict[str, float], picture: Path | None) -> None:
        data: dict[str, Any] = dict(scalars)
        if picture is not None:
            data["progress"] = self.wandb.Image(str(picture))
        self.run.log(data, step=epoch)

    def close(self) -> None:
        self.run.finish()


class MlflowBackend:
    """An MLflow run in experiment $MLFLOW_EXPERIMENT_NAME (else ``autoseg``) at $MLFLOW_TRACKING_URI (else
    MLflow's default), through MlflowClient (no process-wide active run)."""

    def __init__(self, fold_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
        self.client, self.metric = MlflowClient(), Metric
        run_id = _run_id(fold_dir, "mlflow")
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "autoseg"
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            params = [Param(k, v[:500]) for k, v in _flatten(config).items()]
            for i in range(0, len(params), 100):   # MLflow takes at most 100 parameters per batch
                self.client.log_batch(run_id, params=params[i:i + 100])
            _keep_run_id(fold_dir, "mlflow", run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_epoch(self, epoch: int, scalars: dict[str, float], picture: Path | None) -> None:
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(k, v, stamp, epoch) for k, v in scalars.items()])
        if picture is not None:
            self.client.log_artifact(self.run_id, str(picture))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return out
