"""Training: losses, deep supervision, poly LR, the epoch loop, checkpoints and resume, logs, DDP.

Entry point :func:`train_fold` (the Python twin of ``autoseg-train``) with :class:`TrainOptions`.
"""

from autoseg.training.options import TrainOptions
from autoseg.training.trainer import train_fold

__all__ = ["TrainOptions", "train_fold"]
