"""Splits, patch sampling, augmentation and the batch loader."""

from __future__ import annotations

import functools
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _training_fixtures import build_home, tiny_plan  # noqa: E402

from autoseg.data.augmentation import AugmentationParams, augment, initial_patch_size, training_transforms  # noqa: E402
from autoseg.data.loader import BatchKey, BatchMaker, BatchStream  # noqa: E402
from autoseg.data.sampling import crop_padded, is_forced_foreground, sample_patch  # noqa: E402
from autoseg.data.splits import fold_cases, load_or_create_splits, make_splits, parse_fold  # noqa: E402
from autoseg.dataset import DatasetInfo  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402


# ---- splits -------------------------------------------------------------------------------------
def test_five_folds_cover_every_case_once_and_are_deterministic():
    ids = [f"case_{i:02d}" for i in range(12)]
    splits = make_splits(list(reversed(ids)))
    assert len(splits) == 5
    assert sorted(c for s in splits for c in s.val) == ids
    for s in splits:
        assert set(s.train) | set(s.val) == set(ids) and not set(s.train) & set(s.val)
    assert [s.val for s in splits] == [s.val for s in make_splits(ids)]
    assert [s.val for s in splits] != [s.val for s in make_splits(ids, seed=1)]


def test_fewer_than_five_cases_gives_leave_one_out_and_one_case_needs_fold_all(tmp_path):
    splits = make_splits(["a", "b", "c"])
    assert [s.val for s in splits] and sorted(v for s in splits for v in s.val) == ["a", "b", "c"]
    assert all(len(s.val) == 1 for s in splits)
    assert make_splits(["a"]) == []
    with pytest.raises(AutosegError, match="fold all"):
        fold_cases([], 0, ["a"], tmp_path / "splits.json")
    assert fold_cases([], "all", ["a"], tmp_path).val == ["a"]
    with pytest.raises(AutosegError, match="from 0 to 2"):
        fold_cases(splits, 4, ["a", "b", "c"], tmp_path)


def test_splits_file_is_saved_then_reused_even_when_edited(tmp_path):
    path = tmp_path / "splits.json"
    ids = [f"c{i}" for i in range(6)]
    first = load_or_create_splits(path, ids)
    assert json.loads(path.read_text())[0]["val"] == first[0].val
    path.write_text(json.dumps([{"train": ids[:5], "val": ids[5:]}]))
    assert load_or_create_splits(path, ids)[0].val == ["c5"]
    path.write_text(json.dumps([{"train": ["ghost"], "val": []}]))
    with pytest.raises(AutosegError, match="ghost"):
        load_or_create_splits(path, ids)


@pytest.mark.parametrize("text,want", [("fold3", 3), ("0", 0), (2, 2), ("all", "all"), ("fold_1", 1)])
def test_parse_fold(text, want):
    assert parse_fold(text) == want


def test_parse_fold_rejects_garbage():
    with pytest.raises(AutosegError, match="fold0..fold4"):
        parse_fold("first")


# ---- sampling -----------------------------------------------------------------------------------
def test_foreground_forcing_follows_nnunet_rule():
    assert [is_forced_foreground(j, 2, 0.33) for j in range(2)] == [False, True]
    assert [is_forced_foreground(j, 6, 0.33) for j in range(6)] == [False] * 4 + [True] * 2
    assert not any(is_forced_foreground(j, 4, 0.0) for j in range(4))


def test_crop_padded_pads_outside_the_volume():
    a = np.arange(4 * 5, dtype=np.float32).reshape(1, 4, 5)
    out = crop_padded(a, (-1, 3), (3, 4), -7.0)
    assert out.shape == (1, 3, 4)
    assert (out[0, 0] == -7).all() and (out[0, :, 2:] == -7).all()
    np.testing.assert_array_equal(out[0, 1:, :2], a[0, :2, 3:5])


def _toy_case(shape=(20, 30, 30)):
    seg = np.zeros(shape, np.int8)
    seg[3:5, 20:22, 4:6] = 3          # a tiny "enhancing" blob far from the centre
    seg[10:16, 10:18, 10:18] = 2
    data = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    fg = {"small": np.argwhere(seg == 3), "big": np.argwhere(seg == 2), "absent": np.zeros((0, 3), int)}
    return data, seg, fg


def test_forced_patches_are_centred_on_a_present_region_so_small_regions_are_seen():
    data, seg, fg = _toy_case()
    saw_small = 0
    for s in range(40):
        d, sg = sample_patch(data, seg, fg, (8, 8, 8), True, np.random.default_rng(s))
        assert d.shape == (2, 8, 8, 8) and sg.shape == (1, 8, 8, 8)
        centre = sg[0, 4, 4, 4]
        assert centre in (2, 3)
        saw_small += centre == 3
    assert 8 < saw_small < 32  # regions are drawn with equal probability, not by size


def test_random_patches_larger_than_the_volume_are_padded_with_minus_one():
    data, seg, fg = _toy_case((6, 30, 30))
    d, sg = sample_patch(data, seg, fg, (10, 8, 8), False, np.random.default_rng(0))
    assert d.shape == (2, 10, 8, 8) and (sg == -1).sum() == 4 * 64 and (d[sg[None, 0].repeat(2, 0) == -1] == 0).all()


def test_2d_sampling_takes_a_slice_along_axis_0():
    data, seg, fg = _toy_case()
    d, sg = sample_patch(data, seg, {"small": fg["small"]}, (8, 8), True, np.random.default_rng(1))
    assert d.shape == (2, 8, 8) and sg[0, 4, 4] == 3


# ---- augmentation -------------------------------------------------------------------------------
def test_initial_patch_leaves_room_for_rotation_and_scaling():
    assert initial_patch_size((128, 128, 128)) == (206, 206, 206)
    assert initial_patch_size((64, 64), max_angle=0.0) == (76, 76)
    big = initial_patch_size((40, 200))  # 2d, elongated: 15 deg
    assert big[0] > 40 / 0.85 and big[1] > 200 / 0.85


def test_augmentation_is_reproducible_and_leaves_numpy_global_state_alone():
    params = AugmentationParams((12, 12, 12), (0, 1, 2), masked_channels=(0, 1))
    pipe = training_transforms(params)
    initial = initial_patch_size(params.patch_size)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2, *initial)).astype(np.float32)
    seg = rng.integers(-1, 3, (1, *initial)).astype(np.int8)
    np.random.seed(123)
    random.seed(123)
    before, before_py = np.random.get_state()[1].copy(), random.getstate()
    outs = [augment(pipe, data, seg, seed) for seed in (5, 5, 6)]
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert random.getstate() == before_py
    assert outs[0][0].shape == (2, 12, 12, 12) and outs[0][1].shape == (1, 12, 12, 12)
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    assert not np.array_equal(outs[0][0], outs[2][0])
    for seed in range(20):  # every transform (noise draws from Python's random) follows the seed
        np.testing.assert_array_equal(augment(pipe, data, seg, seed)[0], augment(pipe, data, seg, seed)[0])
    assert outs[0][1].min() >= 0  # -1 (outside) became background


def test_modality_dropout_zeroes_some_but_never_all_channels_and_is_off_by_default():
    base = AugmentationParams((12, 12, 12), (0, 1, 2))
    initial = initial_patch_size(base.patch_size)
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((4, *initial)) + 3).astype(np.float32)   # no channel is zero by chance
    seg = np.zeros((1, *initial), np.int8)
    off, always = training_transforms(base), training_transforms(AugmentationParams(**{**base.__dict__,
                                                                                       "modality_dropout": 1.0}))
    counts = set()
    for seed in range(40):
        d_off, _ = augment(off, data, seg, seed)
        d_on, _ = augment(always, data, seg, seed)
        zero = [c for c in range(4) if not d_on[c].any()]
        assert 1 <= len(zero) <= 3 and all(d_off[c].any() for c in range(4))
        kept = [c for c in range(4) if c not in zero]
        np.testing.assert_array_equal(d_on[kept], d_off[kept])  # the rest of the sample is the same
        counts.add(len(zero))
    assert counts == {1, 2, 3}
    single = training_transforms(AugmentationParams((12, 12, 12), (0,), modality_dropout=1.0))
    assert augment(single, data[:1], seg, 0)[0].any()  # one channel is never dropped


# ---- loader -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    return build_home(tmp_path_factory.mktemp("data") / "home", [tiny_plan(batch_size=4)])


def _maker(paths, share=(0, 1, 2, 3), augment=True):
    from autoseg.preprocessing import list_preprocessed_cases, load_case
    cdir = paths.config_dir("3d_fullres")
    info = DatasetInfo.load(paths.dataset_json)
    aug = AugmentationParams((16, 16, 16), (0, 1, 2), (0, 1, 2, 3))
    initial = initial_patch_size(aug.patch_size) if augment else aug.patch_size
    return BatchMaker(functools.partial(load_case, cdir), list_preprocessed_cases(cdir), info, initial, aug, 4,
                      share, 0.33, augment, seed=7)


def test_batches_do_not_depend_on_worker_count_and_ranks_get_the_halves(tiny_paths):
    keys = [BatchKey("train", 0, i) for i in range(3)]
    with BatchStream({"train": _maker(tiny_paths)}, workers=0) as s:
        inline = list(s.batches(keys))
    with BatchStream({"train": _maker(tiny_paths)}, workers=2) as s:
        pooled = list(s.batches(keys))
    assert inline[0].data.shape == (4, 4, 16, 16, 16) and inline[0].target.shape == (4, 3, 16, 16, 16)
    assert inline[0].target.dtype == np.uint8 and set(np.unique(inline[0].target)) <= {0, 1}
    for a, b in zip(inline, pooled):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.target, b.target)
    assert not np.array_equal(inline[0].data, inline[1].data)
    halves = [_maker(tiny_paths, share).batch(keys[0]) for share in ((0, 1), (2, 3))]
    np.testing.assert_array_equal(np.concatenate([h.data for h in halves]), inline[0].data)
    # the forced (last) sample of every batch has foreground
    assert all(b.target[-1, 0].any() for b in inline)


def test_a_failing_worker_is_reported(tiny_paths):
    maker = _maker(tiny_paths)
    maker.case_ids = ["missing_case"]
    with BatchStream({"train": maker}, workers=1) as s, pytest.raises(RuntimeError, match="missing_case"):
        list(s.batches([BatchKey("train", 0, 0)]))
