"""Losses, schedule, log, and the training loop: checkpoints, exact resume, extension, pretrained, CLI."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _training_fixtures import build_home, copy_home, tiny_plan  # noqa: E402

from autoseg.checkpoint import load_checkpoint  # noqa: E402
from autoseg.cli.train import main as train_main  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from autoseg.training import TrainOptions, train_fold  # noqa: E402
from autoseg.training.losses import (  # noqa: E402
    DeepSupervisionLoss,
    DiceBCELoss,
    DiceCELoss,
    deep_supervision_weights,
    downsample_target,
    soft_dice_loss,
)
from autoseg.training.progress import TrainingLog  # noqa: E402
from autoseg.training.schedule import poly_lr  # noqa: E402
from autoseg.training.trainer import pseudo_dice_counts  # noqa: E402


# ---- losses -------------------------------------------------------------------------------------
def test_deep_supervision_weights_halve_and_drop_the_lowest_resolution():
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(1) == [1.0]


def test_soft_dice_is_zero_for_a_perfect_prediction_and_batch_dice_pools_samples():
    t = torch.zeros(2, 1, 4, 4)
    t[0, 0, :2] = 1
    assert soft_dice_loss(t, t, batch_dice=False) == pytest.approx(0, abs=1e-6)
    p = t.clone()
    p[1, 0, 0, 0] = 1  # false positive in an empty sample: per-sample Dice 0 there, batch Dice almost 1
    assert soft_dice_loss(p, t, batch_dice=False) == pytest.approx(0.5, abs=1e-3)
    assert soft_dice_loss(p, t, batch_dice=True) == pytest.approx(1 - 16 / 17, abs=1e-3)


def test_region_loss_is_bce_plus_dice_and_label_loss_is_ce_plus_dice_without_background():
    logits = torch.randn(2, 3, 6, 6, 6)
    target = (torch.rand(2, 3, 6, 6, 6) > 0.5).to(torch.uint8)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
    want = bce + soft_dice_loss(torch.sigmoid(logits), target.float(), False)
    assert DiceBCELoss(False)(logits, target) == pytest.approx(float(want), rel=1e-5)
    labels = torch.randint(0, 3, (2, 1, 6, 6, 6))
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0])
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    want = ce + soft_dice_loss(torch.softmax(logits, 1)[:, 1:], onehot[:, 1:], False)
    assert DiceCELoss(False)(logits, labels) == pytest.approx(float(want), rel=1e-5)


def test_log_dice_keeps_a_dead_heads_gradient_and_leaves_absent_regions_linear():
    target = torch.zeros(2, 1, 8, 8, 8)
    target[0, 0, 2:4, 2:4, 2:4] = 1                    # present in sample 0, absent from sample 1
    logits = torch.full((2, 1, 8, 8, 8), -8.0, requires_grad=True)   # a dead head: p ~ 3e-4 everywhere
    grads = {}
    for form in ("linear", "log"):
        logits.grad = None
        soft_dice_loss(torch.sigmoid(logits), target, False, form=form).backward()
        grads[form] = logits.grad.clone()
    pull = {form: -float(g[0, 0, 2:4, 2:4, 2:4].sum()) for form, g in grads.items()}
    assert pull["linear"] < 1e-3            # 1 - Dice: the pull on the region's logits has vanished
    assert pull["log"] > 0.3                # -log Dice: of order one, however dead the head
    assert torch.equal(grads["log"][1], grads["linear"][1])   # the absent region keeps nnU-Net's term
    p = torch.sigmoid(torch.randn(2, 1, 8, 8, 8))
    d = 1 - float(soft_dice_loss(p[:1], target[:1], False))
    assert float(soft_dice_loss(p[:1], target[:1], False, form="log")) == pytest.approx(-math.log(d), rel=1e-5)
    with pytest.raises(ValueError):
        DiceBCELoss(False, dice="square")


def test_the_patterns_cross_entropy_revives_a_dead_pattern_that_no_region_owns():
    from autoseg.network.regions import RegionLogits, region_patterns
    from autoseg.training.losses import pattern_lookup
    patterns = region_patterns([(1, 2, 4), (1, 4), (4,)], [0, 1, 2, 4])   # background, necrosis, oedema, enhancing
    assert pattern_lookup(patterns)[[0, 3, 1, 7]].tolist() == [0, 1, 2, 3]  # codes WT+2TC+4ET -> pattern
    assert pattern_lookup(patterns)[5].item() == -100                      # WT and ET without TC: no label has it
    label = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    label[0, 2:6, 2:6, 2:6] = 4
    label[0, 3:5, 3:5, 3:5] = 1                                            # necrosis inside the enhancing rim
    target = torch.stack([torch.isin(label, torch.tensor(r)) for r in ([1, 2, 4], [1, 4], [4])], 1).float()
    z = torch.full((1, 4, 8, 8, 8), -4.0)
    z[:, 0] = 4.0                                                          # background outside
    z[:, 3][label > 0] = 8.0                                               # the tumour all called enhancing ...
    z[:, 1] = -8.0                                                         # ... necrosis dead everywhere
    z.requires_grad_(True)
    regions = RegionLogits(patterns)(z)
    nec = (label == 1)
    pull = {}
    for with_patterns in (False, True):
        z.grad = None
        loss = DiceBCELoss(False, dice="log", patterns=patterns)
        out = torch.cat([regions, z], 1) if with_patterns else regions
        loss(out, target).backward(retain_graph=True)
        pull[with_patterns] = -float(z.grad[:, 1][nec].sum())
    share = float(nec.sum()) / nec.numel()       # the cross-entropy pulls (1 - p) ~ 1 per necrosis voxel, mean over voxels
    assert pull[False] < 1e-3 * share            # the regions alone: necrosis gets almost no gradient
    assert pull[True] > 0.9 * share
    assert DiceBCELoss(False, patterns=patterns)(regions, target) == DiceBCELoss(False)(regions, target)   # eval: regions


def test_the_patterns_dice_form_is_set_apart_from_the_regions():
    """``patterns_dice`` changes the patterns' term only: swapping it moves the loss by the same amount whatever
    the regions' form, -log Dice costs more than 1 - Dice on an imperfect fit, and None follows ``dice``."""
    from autoseg.network.regions import RegionLogits, region_patterns
    patterns = region_patterns([(1, 2, 4), (1, 4), (4,)], [0, 1, 2, 4])
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (2, 6, 6, 6), generator=g)
    label[label == 3] = 4
    target = torch.stack([torch.isin(label, torch.tensor(r)) for r in ([1, 2, 4], [1, 4], [4])], 1).float()
    z = torch.randn(2, 4, 6, 6, 6, generator=g)
    out = torch.cat([RegionLogits(patterns)(z), z], 1)
    loss = {(d, p): float(DiceBCELoss(False, dice=d, patterns=patterns, patterns_dice=p)(out, target))
            for d in ("log", "linear") for p in ("log", "linear", None)}
    assert loss["linear", "log"] - loss["linear", "linear"] == pytest.approx(loss["log", "log"] - loss["log", "linear"])
    assert loss["linear", "log"] > loss["linear", "linear"] + 0.1
    assert loss["log", None] == loss["log", "log"] and loss["linear", None] == loss["linear", "linear"]


def test_downsampled_region_targets_keep_a_single_voxel_region():
    t = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
    t[0, 0, 5, 5, 5] = 1
    assert downsample_target(t, (2, 2, 2), True).sum() == 1
    labels = torch.zeros(1, 1, 8, 8, 8)
    labels[0, 0, :4] = 2
    assert downsample_target(labels, (4, 4, 4), False)[0, 0, :2].eq(2).all()


def test_deep_supervision_loss_weights_each_output_and_keeps_every_head_in_the_graph():
    outs = [torch.randn(1, 3, 8, 8, 8, requires_grad=True), torch.randn(1, 3, 4, 4, 4, requires_grad=True),
            torch.randn(1, 3, 2, 2, 2, requires_grad=True)]
    target = (torch.rand(1, 3, 8, 8, 8) > 0.7).to(torch.uint8)
    base = DiceBCELoss(False)
    loss = DeepSupervisionLoss(base, True)(outs, target)
    want = 2 / 3 * base(outs[0], target) + 1 / 3 * base(outs[1], downsample_target(target, (4, 4, 4), True))
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    loss.backward()
    assert outs[2].grad is not None and outs[2].grad.abs().sum() == 0


def test_poly_lr():
    assert poly_lr(0, 1000, 0.01) == 0.01
    assert poly_lr(500, 1000, 0.01) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(1000, 1000, 0.01) == 0.0


def test_pseudo_dice_counts_regions_and_labels():
    target = torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
    target[0, 0, :2] = 1
    logits = torch.full((1, 2, 4, 4), -5.0)
    logits[0, 0, :1] = 5
    logits[0, 1, 0, 0] = 5
    c = pseudo_dice_counts(logits, target, True)
    assert c[:, 0].tolist() == [4, 0, 4] and c[:, 1].tolist() == [0, 1, 0]
    labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = 1
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 1, :2] = 5
    assert pseudo_dice_counts(logits, labels, False)[:, 0].tolist() == [4, 4, 0]


def test_log_keeps_nnunet_ema_and_reports_best():
    log = TrainingLog(["a", "b"])
    assert log.add(1.0, 1.0, [0.4, 0.6], 0.01, 1.0)
    assert log.ema_pseudo_dice[-1] == pytest.approx(0.5)
    assert not log.add(1.0, 1.0, [0.0, float("nan")], 0.01, 1.0)
    assert log.ema_pseudo_dice[-1] == pytest.approx(0.45)
    assert "pseudo-Dice [a 0.0000, b nan]" in log.line(1)
    assert TrainingLog.from_dict(log.to_dict()) == log


# ---- the training loop --------------------------------------------------------------------------
FAST = dict(iters_per_epoch=2, val_iters=1, workers=0, progress=False, validate=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return build_home(tmp_path_factory.mktemp("train") / "home", [tiny_plan()])


@pytest.fixture
def paths(prepared, tmp_path):
    return copy_home(prepared, tmp_path / "home")


def _weights(fold_dir: Path, name: str = "checkpoint_final.pt") -> dict:
    return load_checkpoint(fold_dir / name)


@pytest.mark.slow
def test_resume_after_one_epoch_gives_identical_weights_and_the_fold_folder_is_complete(prepared, tmp_path):
    straight = copy_home(prepared, tmp_path / "a")
    resumed = copy_home(prepared, tmp_path / "b")
    fa = train_fold(straight, "3d_fullres", 0, TrainOptions(epochs=2, **FAST))
    train_fold(resumed, "3d_fullres", "fold0", TrainOptions(epochs=1, **FAST))
    (resumed.fold_dir("3d_fullres", 0) / "checkpoint_final.pt").unlink()  # as if killed after epoch 0
    fb = train_fold(resumed, "3d_fullres", 0, TrainOptions(epochs=2, resume=True, **FAST))
    a, b = _weights(fa), _weights(fb)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["network_state"].items():
        assert torch.equal(v, b["network_state"][k]), k
    for s, t in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        assert torch.equal(s["momentum_buffer"], t["momentum_buffer"])
    assert a["log"]["train_loss"] == b["log"]["train_loss"]
    assert a["log"]["lr"] == [0.01, pytest.approx(0.01 * 0.5 ** 0.9)]
    # what the fold folder holds
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "progress.png", "log.txt"):
        assert (fa / name).is_file(), name
    assert straight.splits_json.is_file()
    lines = (fa / "log.txt").read_text().splitlines()
    epoch_lines = [ln for ln in lines if " epoch 1: train loss" in ln]
    assert epoch_lines and "pseudo-Dice [whole tumour" in epoch_lines[0] and "lr 0.005359" in epoch_lines[0]
    assert a["sampler_state"] == {"seed": 0, "next_epoch": 2}
    assert (fa / "progress.png").read_bytes()[:4] == b"\x89PNG"
    assert "resuming at epoch 1 of 2" in (fb / "log.txt").read_text()


@pytest.mark.slow
def test_existing_run_needs_resume_finished_run_is_skipped_and_can_be_extended(paths):
    fold_dir = train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=1, **FAST))
    mtime = (fold_dir / "checkpoint_final.pt").stat().st_mtime_ns
    train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=1, **FAST))  # complete: nothing to do
    assert (fold_dir / "checkpoint_final.pt").stat().st_mtime_ns == mtime
    with pytest.raises(AutosegError, match="--resume"):
        train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=2, **FAST))
    with pytest.raises(AutosegError, match="--seed 0"):
        train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=2, resume=True, seed=1, **FAST))
    with pytest.raises(AutosegError, match="--dice log"):
        train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=2, resume=True, dice="linear", **FAST))
    train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=2, resume=True, **FAST))
    assert _weights(fold_dir)["epoch"] == 2


def test_pretrained_weights_load_when_the_network_matches_and_fail_clearly_otherwise(paths):
    from autoseg.dataset import DatasetInfo
    from autoseg.network import build_network, network_for_dataset, output_layers
    from autoseg.training.state import load_pretrained
    fold_dir = train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=1, **FAST))
    source = fold_dir / "checkpoint_final.pt"
    saved = _weights(fold_dir)["network_state"]
    net = network_for_dataset(tiny_plan().network, DatasetInfo.load(paths.dataset_json))
    heads = output_layers(tiny_plan().network, 4, 3)
    assert heads and all(k.startswith("heads.") for k in heads)
    load_pretrained(net, source, heads)
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    two_outputs = build_network(tiny_plan().network, 4, 2)  # other regions: heads keep their init
    load_pretrained(two_outputs, source, heads)
    with pytest.raises(AutosegError, match="do not match this network"):
        load_pretrained(two_outputs, source, set())   # the heads are the only layers allowed to differ
    other = build_network(tiny_plan(features=(6, 8, 16)).network, 4, 3)
    with pytest.raises(AutosegError, match="do not match this network"):
        load_pretrained(other, source, heads)


@pytest.mark.slow
def test_final_validation_writes_summary_and_csv(paths):
    fold_dir = train_fold(paths, "3d_fullres", 2, TrainOptions(epochs=1, **{**FAST, "validate": True}))
    import json
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    split = json.loads(paths.splits_json.read_text())[2]
    assert sorted(summary["cases"]) == sorted(split["val"])
    assert 0 <= summary["mean"]["whole tumour"]["dice"] <= 1
    rows = (fold_dir / "validation" / "per_case.csv").read_text().splitlines()
    assert len(rows) == 1 + len(split["val"]) and "whole tumour_dice" in rows[0]
    before = (fold_dir / "validation" / "summary.json").stat().st_mtime_ns
    train_fold(paths, "3d_fullres", 2, TrainOptions(epochs=2, resume=True, **{**FAST, "validate": True}))
    assert (fold_dir / "validation" / "summary.json").stat().st_mtime_ns != before  # extended run is revalidated


def test_cli_bad_fold_and_missing_preprocessing_exit_2(paths, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["3d_fullres", "fold9", "--home", str(paths.root), "--epochs", "1"])
    assert e.value.code == 2 and "fold 9 does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        train_main(["2d", "0", "--home", str(paths.root)])
    assert e.value.code == 2 and "'2d' is not in the plan" in capsys.readouterr().err


def test_cli_trains_a_fold(paths, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["3d_fullres", "fold3", "--home", str(paths.root), "--epochs", "1", "--iters-per-epoch", "1",
                    "--val-iters", "1", "--workers", "1", "--no-validation", "--device", "cpu", "--dice", "linear"])
    assert e.value.code == 0
    assert "fold_3" in capsys.readouterr().out
    assert math.isfinite(_weights(paths.fold_dir("3d_fullres", 3))["log"]["train_loss"][0])
    # the log names the Dice forms: --dice sets the regions', the label patterns' is the recipe's (log)
    assert "recipe nnunet (linear Dice on regions, log Dice on label patterns)" in \
        (paths.fold_dir("3d_fullres", 3) / "log.txt").read_text()


@pytest.mark.slow
def test_2d_configuration_trains_on_slices(tmp_path):
    paths = build_home(tmp_path / "home", [tiny_plan(patch=(16, 16), mirror_axes=(0, 1))], n_cases=3)
    fold_dir = train_fold(paths, "2d", 0, TrainOptions(epochs=1, **FAST))
    assert np.isfinite(_weights(fold_dir)["log"]["train_loss"][0])


# ---- precision ---------------------------------------------------------------------------------
def test_precision_auto_is_fp16_on_cuda_bf16_on_a_bf16_cpu_else_fp32(monkeypatch):
    from autoseg import precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.compute_dtype_for("fp32", cuda) is None
    assert precision.compute_dtype_for("bf16", cpu) is torch.bfloat16
    assert precision.compute_dtype_for("fp16", cpu) is torch.float16
    assert precision.compute_dtype_for("auto", cuda) is torch.float16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.compute_dtype_for("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.compute_dtype_for("auto", cpu) is None   # emulated bf16 would be slower than fp32
    with pytest.raises(AutosegError, match="unknown precision 'half'"):
        precision.compute_dtype_for("half", cpu)


def test_one_device_resolver_for_training_and_prediction(monkeypatch):
    """autoseg-train and autoseg-predict resolve --device the same way; a DDP rank takes its local GPU."""
    from autoseg.precision import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(AutosegError, match=r"^--device cuda asked for, but no CUDA GPU is visible; use --device cpu"):
        resolve_device("cuda:1")
    with pytest.raises(AutosegError, match=r"^--device 'gpu' is not known; use cuda, cuda:N, cpu or auto$"):
        resolve_device("gpu")
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("auto") == torch.device("cuda", 0) and resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert current == [torch.device("cuda", i) for i in (0, 1, 3)]


@pytest.mark.slow
def test_bf16_step_follows_the_fp32_step_and_the_log_names_the_precision(prepared, tmp_path):
    runs = {}
    for name in ("fp32", "bf16"):
        paths = copy_home(prepared, tmp_path / name)
        fold_dir = train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=1, precision=name, **FAST))
        runs[name] = _weights(fold_dir)
        assert f"precision {name}" in (fold_dir / "log.txt").read_text()
        assert runs[name]["grad_scaler_state"] == {}   # loss scaling is for fp16 only
    # same batches and initial weights: bf16 arithmetic changes the losses in the 3rd digit, not more
    assert runs["bf16"]["log"]["train_loss"] == pytest.approx(runs["fp32"]["log"]["train_loss"], rel=2e-2)


@pytest.mark.slow
def test_a_run_without_fp16_resumes_with_fp16_and_its_fresh_loss_scaler(paths):
    # e.g. started on a CPU (bf16, no scaler state saved), continued on a GPU (fp16 + GradScaler)
    train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=1, precision="bf16", **FAST))
    fold_dir = train_fold(paths, "3d_fullres", 0, TrainOptions(epochs=2, precision="fp16", resume=True, **FAST))
    ckpt = _weights(fold_dir)
    assert ckpt["epoch"] == 2 and ckpt["grad_scaler_state"]["scale"] > 0
    assert "precision fp16" in (fold_dir / "log.txt").read_text()
