"""The training log: per-epoch metrics kept in the checkpoint, written to log.txt and drawn in progress.png."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.io import atomic_path

EMA_DECAY = 0.9


@dataclass
class TrainingLog:
    """One entry per finished epoch; ``ema_pseudo_dice`` is nnU-Net's 0.9/0.1 moving average of the mean."""

    region_names: list[str]
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    pseudo_dice: list[list[float]] = field(default_factory=list)
    ema_pseudo_dice: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    best_ema: float = -1.0

    @property
    def epochs_done(self) -> int:
        return len(self.train_loss)

    def add(self, train_loss: float, val_loss: float, pseudo_dice: list[float], lr: float, epoch_time: float) -> bool:
        """Record an epoch; True when its EMA pseudo-Dice is the best so far."""
        values = [d for d in pseudo_dice if not math.isnan(d)]
        mean = float(np.mean(values)) if values else float("nan")
        prev = self.ema_pseudo_dice[-1] if self.ema_pseudo_dice else float("nan")
        ema = mean if math.isnan(prev) else (prev if math.isnan(mean) else EMA_DECAY * prev + (1 - EMA_DECAY) * mean)
        self.train_loss.append(float(train_loss))
        self.val_loss.append(float(val_loss))
        self.pseudo_dice.append([float(d) for d in pseudo_dice])
        self.ema_pseudo_dice.append(float(ema))
        self.lr.append(float(lr))
        self.epoch_time.append(float(epoch_time))
        if not math.isnan(ema) and ema > self.best_ema:
            self.best_ema = float(ema)
            return True
        return False

    def line(self, epoch: int) -> str:
        """log.txt line of ``epoch`` (0-based)."""
        dice = ", ".join(f"{n} {d:.4f}" for n, d in zip(self.region_names, self.pseudo_dice[epoch]))
        return (f"epoch {epoch}: train loss {self.train_loss[epoch]:.4f}, val loss {self.val_loss[epoch]:.4f}, "
                f"pseudo-Dice [{dice}], EMA {self.ema_pseudo_dice[epoch]:.4f}, lr {self.lr[epoch]:.6f}, "
                f"epoch time {self.epoch_time[epoch]:.1f} s")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingLog:
        return cls(**d)


def append_log(path: Path, message: str) -> None:
    """Append a time-stamped line to log.txt (append-only, so a crash loses at most this line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def plot_progress(log: TrainingLog, path: Path) -> None:
    """progress.png: losses, pseudo-Dice per region (+ EMA), learning rate. Agg canvas, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 10))
    FigureCanvasAgg(fig)
    ax_loss, ax_dice, ax_lr = fig.subplots(3, 1, sharex=True)
    x = np.arange(log.epochs_done)
    ax_loss.plot(x, log.train_loss, label="train loss")
    ax_loss.plot(x, log.val_loss, label="val loss")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right")
    dice = np.array(log.pseudo_dice, dtype=float).reshape(log.epochs_done, -1)
    for i, name in enumerate(log.region_names):
        ax_dice.plot(x, dice[:, i], ":", label=f"pseudo-Dice {name}")
    ax_dice.plot(x, log.ema_pseudo_dice, "k-", label="EMA mean pseudo-Dice")
    ax_dice.set_ylabel("pseudo-Dice")
    ax_dice.set_ylim(0, 1)
    ax_dice.legend(loc="lower right", fontsize="small")
    ax_lr.plot(x, log.lr)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
