"""Shared fixtures: small synthetic datasets written to tmp folders, and the real BraTS cases when present."""

from __future__ import annotations

import locale
import os
import shutil
from pathlib import Path

import pytest

from autoseg.synthetic import write_raw_dataset

BRATS_DIR = Path(os.environ.get("AUTOSEG_BRATS_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats"))


@pytest.fixture(autouse=True)
def _process_locale_is_restored():
    """Tests that call SimpleITK's DICOM code directly leave the C locale behind (ITK/GDCM set it), after
    which Python decodes text as ASCII in every later test; the product restores it (io.keeps_locale)."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="session")
def brats_dir() -> Path:
    """The real BraTS cases (../shared/data/brats); tests using it skip cleanly when absent."""
    if not (BRATS_DIR / "labelled").is_dir():
        pytest.skip(f"real BraTS cases not found at {BRATS_DIR}")
    return BRATS_DIR


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty data root."""
    root = tmp_path / "autoseg_data"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def synthetic_home_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only session-wide ``synthetic_home`` for tests that never write to it; each ``synthetic_home`` copies it."""
    home = tmp_path_factory.mktemp("home") / "autoseg_data"
    write_raw_dataset(home / "raw" / "Dataset001_Synthetic", n_train=6, n_test=2, shape=(48, 64, 64), seed=0)
    return home


@pytest.fixture
def synthetic_home(home: Path, synthetic_home_session: Path) -> Path:
    """A data root with raw/Dataset001_Synthetic: 6 training + 2 test BraTS-like cases of 48x64x64, the
    test's own copy (copied, not regenerated: writing the 40 compressed images cost about 1 s per test)."""
    shutil.copytree(synthetic_home_session / "raw", home / "raw")
    return home
