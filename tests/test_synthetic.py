"""The synthetic BraTS-like generator: deterministic, brain-like, nested tumour, readable by the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg import brats
from autoseg.dataset import load_dataset
from autoseg.io import read_image
from autoseg.synthetic import make_case, write_brats_folders, write_raw_dataset


def test_same_seed_same_case_other_seed_other_tumour():
    a, b, c = make_case((32, 40, 40), seed=3), make_case((32, 40, 40), seed=3), make_case((32, 40, 40), seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images)) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)


@pytest.mark.parametrize("convention", ["brats2020", "brats2023"])
def test_tumour_is_nested_inside_the_brain(convention: str):
    et = brats.ENHANCING[convention]
    for seed in range(4):
        case = make_case((40, 48, 48), seed=seed, convention=convention)
        brain = case.images[0] > 0
        label = case.label
        assert set(np.unique(label)) <= {0, 1, 2, et} and (label == 2).any() and (label == et).any()
        assert not (label[~brain] > 0).any()
        # enhancing and necrosis lie inside the whole tumour's filled extent: oedema surrounds them
        core = np.isin(label, (1, et))
        assert (label > 0).sum() > core.sum() > 0


def test_channels_have_region_specific_contrast():
    case = make_case((40, 48, 48), seed=1)
    t1, t1ce, t2, flair = case.images
    label, brain = case.label, (case.images[0] > 0) & (case.label == 0)

    def mean(img, mask):
        return float(img[mask].mean())

    assert mean(t1ce, label == 4) > 1.5 * mean(t1ce, brain)      # enhancing is bright on T1ce
    assert mean(flair, label == 2) > 1.5 * mean(flair, brain)    # oedema is bright on FLAIR
    assert mean(t2, label == 2) > 1.5 * mean(t2, brain)          # and on T2
    assert mean(t1, label == 1) < 0.75 * mean(t1, brain)         # necrosis is dark on T1


def test_tumour_size_and_position_vary():
    centres, sizes = [], []
    for seed in range(6):
        label = make_case((40, 48, 48), seed=seed).label
        centres.append(np.argwhere(label > 0).mean(axis=0))
        sizes.append(int((label > 0).sum()))
    assert np.ptp(np.array(centres), axis=0).max() > 8 and max(sizes) > 1.5 * min(sizes)


def test_no_tumour_case():
    assert not make_case((24, 32, 32), seed=0, tumour=False).label.any()


def test_raw_dataset_loads(tmp_path: Path):
    raw = write_raw_dataset(tmp_path / "Dataset002_S", n_train=2, n_test=1, shape=(24, 32, 32))
    info, cases = load_dataset(raw)
    assert info.region_based and info.num_channels == 4 and list(cases) == ["case_000", "case_001"]
    image, geom = read_image(cases["case_000"].images[3])
    assert image.shape == (24, 32, 32) and geom.spacing == (1.0, 1.0, 1.0)
    assert (raw / "imagesTs" / "case_002_0000.nii.gz").is_file()


@pytest.mark.parametrize("convention", ["brats2020", "brats2023"])
def test_brats_folders_are_recognised(tmp_path: Path, convention: str):
    folders = write_brats_folders(tmp_path, n=1, shape=(24, 32, 32), convention=convention)
    case = brats.find_brats_case(folders[0])
    assert case is not None and case.convention == convention and case.label is not None
    assert not brats.missing_channels(case)


def test_held_back_labels_and_case_numbering(tmp_path: Path):
    train = write_brats_folders(tmp_path / "src", n=2, shape=(24, 32, 32), seed=5)
    test = write_brats_folders(tmp_path / "src", n=1, shape=(24, 32, 32), seed=5, first_index=2, labelled=False,
                               labels_to=tmp_path / "refs")
    assert [f.name for f in train + test] == [f"BraTS20_Synthetic_{k:03d}" for k in range(3)]
    assert brats.find_brats_case(test[0]).label is None
    ref, _ = read_image(tmp_path / "refs" / "BraTS20_Synthetic_002.nii.gz")
    assert np.array_equal(ref, make_case((24, 32, 32), seed=7).label)
