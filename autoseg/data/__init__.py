"""Data for training: cross-validation splits, patch sampling, augmentation and the batch loader."""

from autoseg.data.loader import Batch, BatchKey, BatchMaker, BatchStream
from autoseg.data.splits import Split, fold_cases, load_or_create_splits, make_splits, parse_fold

__all__ = ["Batch", "BatchKey", "BatchMaker", "BatchStream", "Split", "fold_cases", "load_or_create_splits",
           "make_splits", "parse_fold"]
