"""Preprocessing: reorient, crop to the nonzero box, normalise, resample; store per case; invert on export.

Public API used by training and inference:
:func:`preprocess_case`, :func:`restore_probabilities`, :func:`restore_label`,
:func:`preprocess_dataset`, :func:`load_case`, :func:`list_preprocessed_cases`,
:class:`CaseProperties`, :class:`PreprocessedCase`.
"""

from autoseg.preprocessing.case import preprocess_case, restore_label, restore_probabilities
from autoseg.preprocessing.pipeline import preprocess_dataset
from autoseg.preprocessing.properties import CaseProperties
from autoseg.preprocessing.storage import PreprocessedCase, list_preprocessed_cases, load_case

__all__ = ["CaseProperties", "PreprocessedCase", "list_preprocessed_cases", "load_case", "preprocess_case",
           "preprocess_dataset", "restore_label", "restore_probabilities"]
