"""Training of one fold: :func:`train_fold`, the Python twin of ``autoseg-train``, with a recipe
(:mod:`autoseg.recipes`: network, loss, optimiser, schedule, deep supervision, sampling, accumulation).

Per epoch: the schedule's learning rate, ``iters_per_epoch`` optimiser steps on augmented patches
(each over ``accumulation`` batches), ``val_iters``
patch-based validation steps (loss and pseudo-Dice, no augmentation), a log line, progress.png and
checkpoint_latest.pt (checkpoint_best.pt when the EMA pseudo-Dice improves). At the end
checkpoint_final.pt and a sliding-window validation of the held-out cases.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from autoseg.checkpoint import load_checkpoint, save_checkpoint
from autoseg.cascade import prior_labels
from autoseg.context import ContextSlices, expand_channels
from autoseg.data.augmentation import AugmentationParams, initial_patch_size
from autoseg.data.device_augmentation import training_stream
from autoseg.data.loader import Batch, BatchKey, BatchMaker, BatchStream
from autoseg.data.splits import Split, fold_cases, load_or_create_splits, parse_fold
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail, interrupts_deferred
from autoseg.locks import TRAINING, TRAINING_FIX, write_lock
from autoseg.network.regions import region_patterns
from autoseg.paths import DatasetPaths
from autoseg.plans import ConfigurationPlan, NetworkPlan, Plans
from autoseg.precision import compute_dtype_for, dtype_name, resolve_device
from autoseg.training import distributed as ddp
from autoseg.training.loggers import open_tracker
from autoseg.recipes import OptimiserChoice, Recipe, network_plan, recipe_of_checkpoint
from autoseg.training.losses import DeepSupervisionLoss, recipe_loss
from autoseg.training.options import TrainOptions
from autoseg.training.progress import TrainingLog, append_log, plot_progress
from autoseg.training.schedule import epoch_lr, set_lr
from autoseg.training.state import check_same_recipe, load_pretrained, restore_training, training_payload
from autoseg.training.validation import validate_cases, validate_raw


@dataclass(frozen=True)
class FoldData:
    """Everything one fold trains from: the plan, the dataset's labels, the case split and the cases' folder,
    and the dataset's folder name (``DatasetNNN_Name``), stored in checkpoints; for a cascade, the folder of its
    previous stage's held-out segmentations (:mod:`autoseg.training.cascade`)."""

    plan: ConfigurationPlan
    info: DatasetInfo
    split: Split
    config_dir: Path
    dataset: str
    prior_dir: Path | None = None


def load_fold_data(paths: DatasetPaths, configuration: str, fold: int | str, dist: ddp.DistInfo | None = None) -> FoldData:
    """Read plans.json, dataset.json and the preprocessed case list; splits.json is created once (by rank 0)."""
    from autoseg.preprocessing import list_preprocessed_cases
    plan = Plans.load(paths.plans_json).configuration(configuration, paths.plans_json)
    dataset_json = paths.dataset_json if paths.dataset_json.is_file() else paths.preprocessed / "dataset.json"
    info = DatasetInfo.load(dataset_json)
    config_dir = paths.config_dir(plan.data_of or configuration)   # a cascade reads 3d_fullres's cases
    case_ids = list_preprocessed_cases(config_dir)
    if not case_ids:
        raise fail(config_dir, "no preprocessed cases", f"run autoseg-preprocess -c {configuration} first")
    if dist is None or dist.is_main:
        splits = load_or_create_splits(paths.splits_json, case_ids)
        ddp.barrier()
    else:
        ddp.barrier()  # rank 0 has written splits.json
        splits = load_or_create_splits(paths.splits_json, case_ids)
    return FoldData(plan, info, fold_cases(splits, fold, case_ids, paths.splits_json), config_dir, paths.name)


def batch_makers(fold: FoldData, options: TrainOptions, dist: ddp.DistInfo,
                 recipe: Recipe | None = None) -> dict[str, BatchMaker]:
    """The train (augmented) and val (not augmented) batch makers of this rank; the foreground share and mode
    are the recipe's (a share of None: the plan's)."""
    recipe = recipe or options.effective_recipe()
    plan = fold.plan
    patch = tuple(plan.patch_size)
    masked = expand_channels([i for i, n in enumerate(plan.normalization) if n.use_mask], plan.network.context_slices)
    aug = AugmentationParams(patch, tuple(plan.mirror_axes), masked, options.modality_dropout)
    fg = recipe.foreground
    oversample = plan.oversample_foreground if fg.share is None else fg.share
    share = ddp.rank_share(plan.batch_size, dist)
    load = functools.partial(_load_case, fold.config_dir, context=plan.network.context_slices, prior_dir=fold.prior_dir)
    priors = prior_labels(fold.info) if fold.prior_dir is not None else ()

    def maker(cases: list[str], augment: bool) -> BatchMaker:
        initial = initial_patch_size(patch) if augment else patch
        return BatchMaker(load, cases, fold.info, initial, aug, plan.batch_size, share, oversample, augment, options.seed,
                          fg.mode, prior_labels=priors)

    return {"train": maker(fold.split.train, options.augment), "val": maker(fold.split.val, False)}


def _load_case(config_dir: Path, case_id: str, context: int = 0, prior_dir: Path | None = None):
    """A preprocessed case, memory-mapped; with 2.5D ``context`` its ``data[:, z]`` is slice z with its neighbours;
    with ``prior_dir`` (a cascade) its ``prior`` is the previous stage's held-out segmentation."""
    from autoseg.preprocessing import load_case
    from autoseg.training.cascade import prior_path
    case = load_case(config_dir, case_id, mmap=True)
    if prior_dir is not None:
        case = replace(case, prior=np.load(prior_path(prior_dir, case_id), mmap_mode="r"))
    return replace(case, data=ContextSlices(case.data, context)) if context else case


def build_optimizer(network: nn.Module, choice: OptimiserChoice) -> torch.optim.Optimizer:
    """The recipe's optimiser: SGD (nnU-Net: Nesterov momentum 0.99) or AdamW, at the recipe's initial lr."""
    if choice.name == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=choice.lr, betas=tuple(choice.betas),
                                 weight_decay=choice.weight_decay)
    return torch.optim.SGD(network.parameters(), lr=choice.lr, momentum=choice.momentum,
                           nesterov=choice.nesterov, weight_decay=choice.weight_decay)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _to_device(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.as_tensor(batch.data).to(device, non_blocking=True)   # arrays, or tensors from --augment-on device
    target = torch.as_tensor(batch.target).to(device, non_blocking=True)
    return data, target


def train_step(network: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, batch: Batch | Sequence[Batch], device: torch.device, grad_clip: float,
               dtype: torch.dtype | None) -> float:
    """One optimiser step computing in ``dtype`` (None = fp32), gradient norm clipped to ``grad_clip``; returns the
    loss (the mean over the batches).

    Several batches accumulate: each one's loss is divided by their number before its backward, so the step
    follows the gradient of their mean loss, as one batch of all their samples would for a loss that is a mean
    over samples (batch Dice, pooled over a batch, is not). Under DDP gradients are exchanged once, at the last.
    The scaler is enabled for fp16 only; bf16 has fp32's range and needs no loss scaling.
    """
    batches = [batch] if isinstance(batch, Batch) else list(batch)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for i, b in enumerate(batches):
        data, target = _to_device(b, device)
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last or not isinstance(network, nn.parallel.DistributedDataParallel) \
            else network.no_sync()
        with sync:
            with _autocast(device, dtype):
                loss = loss_fn(network(data), target)
            scaler.scale(loss / len(batches) if len(batches) > 1 else loss).backward()
        total += float(loss.detach())
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total / len(batches)


def pseudo_dice_counts(logits: torch.Tensor, target: torch.Tensor, region_based: bool) -> torch.Tensor:
    """(3, n_foreground) true positives, false positives, false negatives summed over the batch."""
    if region_based:
        pred, ref = logits > 0, target.bool()
    else:
        n = logits.shape[1]
        pred = nn.functional.one_hot(logits.argmax(1), n).movedim(-1, 1)[:, 1:].bool()
        ref = nn.functional.one_hot(target[:, 0].long(), n).movedim(-1, 1)[:, 1:].bool()
    axes = (0, *range(2, pred.ndim))
    return torch.stack([(pred & ref).sum(axes), (pred & ~ref).sum(axes), (~pred & ref).sum(axes)]).double()


@torch.no_grad()
def val_step(network: nn.Module, loss_fn: nn.Module, batch: Batch, device: torch.device, region_based: bool,
             dtype: torch.dtype | None) -> tuple[float, torch.Tensor]:
    """Validation loss and pseudo-Dice counts of one batch (full-resolution output)."""
    data, target = _to_device(batch, device)
    with _autocast(device, dtype):
        outputs = network(data)
        loss = loss_fn(outputs, target)
    full = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    return float(loss), pseudo_dice_counts(full.float(), target, region_based).cpu()


def epoch_keys(epoch: int, options: TrainOptions, with_val: bool, iters: int, accumulation: int = 1
               ) -> Iterator[BatchKey]:
    """The batches of one epoch: ``iters`` optimiser steps of ``accumulation`` batches each, then validation."""
    for i in range(iters * accumulation):
        yield BatchKey("train", epoch, i)
    if with_val:
        for i in range(options.val_iters):
            yield BatchKey("val", epoch, i)


def run_epoch(epoch: int, network: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, stream: BatchStream, options: TrainOptions, device: torch.device,
              region_based: bool, dtype: torch.dtype | None, n_regions: int,
              show: bool, recipe: Recipe | None = None) -> tuple[float, float, list[float]]:
    """Train and validate one epoch; return train loss, val loss and pseudo-Dice per region (all ranks)."""
    recipe = recipe or options.effective_recipe()
    with_val = options.val_iters > 0 and bool(stream.makers["val"].case_ids)
    keys = list(epoch_keys(epoch, options, with_val, recipe.iters_per_epoch, recipe.accumulation))
    train_losses, val_losses = [], []
    pending: list[Batch] = []
    counts = torch.zeros(3, n_regions, dtype=torch.float64)
    network.train()
    bar = tqdm(total=len(keys), desc=f"epoch {epoch}", leave=False, disable=not show, dynamic_ncols=True)
    for key, batch in zip(keys, stream.batches(keys)):
        if key.stream == "train":
            pending.append(batch)
            if len(pending) == recipe.accumulation:
                train_losses.append(train_step(network, loss_fn, optimizer, scaler,
                                               pending if len(pending) > 1 else pending[0], device, options.grad_clip,
                                               dtype))
                pending = []
                bar.set_postfix(loss=f"{train_losses[-1]:.3f}")
        else:
            network.eval()
            loss, c = val_step(network, loss_fn, batch, device, region_based, dtype)
            val_losses.append(loss)
            counts += c
        bar.update()
    bar.close()
    sums = ddp.reduce_sum(torch.tensor([np.sum(train_losses), len(train_losses), np.sum(val_losses), len(val_losses)],
                                       dtype=torch.float64, device=device)).cpu()
    counts = ddp.reduce_sum(counts.to(device)).cpu()
    tp, fp, fn = counts
    dice = torch.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), torch.full_like(tp, float("nan")))
    val_loss = float(sums[2] / sums[3]) if sums[3] else float("nan")
    return float(sums[0] / max(1.0, float(sums[1]))), val_loss, dice.tolist()


def _init_network(fold: FoldData, net_plan: NetworkPlan, options: TrainOptions, device: torch.device) -> nn.Module:
    from autoseg.network import network_for_dataset, output_layers_for_dataset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        network = network_for_dataset(net_plan, fold.info, deep_supervision=True)
    if options.pretrained:
        load_pretrained(network, Path(options.pretrained), output_layers_for_dataset(net_plan, fold.info))
    return network.to(device)


def _remove_stale_temporaries(fold_dir: Path) -> None:
    """Delete hidden checkpoint temporaries a killed run left (``.checkpoint_*.tmp.pt``).

    Safe here and not in prediction: one process (rank 0) writes a fold folder, while several
    ``--shard`` jobs may share a prediction folder.
    """
    for tmp in fold_dir.glob(".checkpoint_*.tmp.pt"):
        tmp.unlink(missing_ok=True)


def _start_state(fold_dir: Path, options: TrainOptions, data: FoldData, fold: int | str, recipe: Recipe) -> dict | None:
    """The checkpoint to continue from, None to start fresh; refuse to silently overwrite a run, or to continue
    one of another plan, recipe, dataset or fold."""
    latest = fold_dir / "checkpoint_latest.pt"
    if not latest.is_file():
        return None
    from dataclasses import asdict
    ckpt = load_checkpoint(latest, asdict(data.plan), dataset=data.dataset, fold=fold)
    check_same_recipe(recipe_of_checkpoint(ckpt, latest), recipe, latest)
    finished = ckpt["epoch"] >= recipe.epochs
    if not options.resume and not finished:
        raise fail(latest, f"a run of {ckpt['epoch']} epoch(s) exists in this fold folder",
                   "add --resume to continue it (a larger --epochs extends a finished run), or delete the folder")
    return ckpt


def train_fold(paths: DatasetPaths, configuration: str, fold: int | str, options: TrainOptions) -> Path:
    """Train (or resume, or extend) one fold and validate it; return the fold folder.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 writes the files.
    """
    fold = parse_fold(fold)
    recipe = options.effective_recipe()
    dist = ddp.dist_from_env()
    device = resolve_device(options.device, dist.local_rank if dist.enabled else None)
    with ddp.process_group(dist, device), write_lock(paths.fold_dir(configuration, fold, recipe.name), TRAINING,
                                                     TRAINING_FIX, enabled=dist.is_main):   # one trainer per fold
        return _train_fold(paths, configuration, fold, options, recipe, dist, device)


def recipe_network(recipe: Recipe, plan: NetworkPlan) -> NetworkPlan:
    """The plan's network as the recipe wants it: its arch on the plan's topology (the registry's adapt), then
    its overrides, checked. An unknown arch or a plan the arch cannot build is one line naming the recipe."""
    from autoseg.network import adapt_network_plan, check_network_plan, network_names
    where = recipe.source or None
    arch = recipe.network.arch
    if arch is not None and arch not in network_names():
        raise fail(where, f"network.arch {arch!r} is not a known network",
                   f"use one of {', '.join(network_names())}, or register your own (docs/extending.md)")
    net_plan = network_plan(plan, recipe.network, functools.partial(adapt_network_plan, where=where))
    check_network_plan(net_plan, where)
    return net_plan


def check_fits(recipe: Recipe, net_plan: NetworkPlan, plan: ConfigurationPlan, info: DatasetInfo, budget_bytes: int,
               mixed_precision: bool) -> None:
    """Refuse, in one line naming the recipe, a network whose training step at the plan's patch and batch would
    not fit ``budget_bytes`` (the registry's memory estimate, as the planner sizes plans with)."""
    from autoseg.cascade import network_in_channels
    from autoseg.network import estimate_memory
    from autoseg.planning.planner import GIB
    need = estimate_memory(net_plan, plan.patch_size, plan.batch_size, network_in_channels(info.num_channels, net_plan),
                           info.num_outputs, mixed_precision).total
    if need > budget_bytes:
        raise fail(recipe.source or None, f"network {net_plan.arch} of recipe {recipe.name} needs about "
                   f"{need / GIB:.1f} GiB for patch {'x'.join(map(str, plan.patch_size))}, batch {plan.batch_size}; "
                   f"this GPU has {budget_bytes / GIB:.1f} GiB for tensors",
                   "use a smaller network (e.g. network.kwargs max_features), or plan for this GPU (autoseg-plan "
                   "--vram GB) and preprocess again")


def _check_fits_gpu(recipe: Recipe, net_plan: NetworkPlan, data: FoldData, device: torch.device,
                    dtype: torch.dtype | None) -> None:
    """On CUDA, a network the recipe changed must fit the GPU (the plan's own was sized for it by the planner)."""
    if device.type != "cuda" or net_plan == data.plan.network:
        return
    from autoseg.planning.planner import GIB, memory_budget_bytes
    total = torch.cuda.get_device_properties(device).total_memory
    check_fits(recipe, net_plan, data.plan, data.info, memory_budget_bytes(total / GIB), dtype is not None)


def _train_fold(paths: DatasetPaths, configuration: str, fold: int | str, options: TrainOptions, recipe: Recipe,
                dist: ddp.DistInfo, device: torch.device) -> Path:
    data = load_fold_data(paths, configuration, fold, dist)
    if data.plan.previous_stage is not None:
        data = _with_previous_stage(paths, data, fold, options, recipe, dist)
    fold_dir = paths.fold_dir(configuration, fold, recipe.name)
    log_path = fold_dir / "log.txt"
    dtype = compute_dtype_for(options.precision, device)
    net_plan = recipe_network(recipe, data.plan.network)
    _check_fits_gpu(recipe, net_plan, data, device, dtype)
    patterns = region_patterns(data.info.regions, data.info.label_values) \
        if data.info.region_based and net_plan.region_head == "softmax" else None   # the nested head's patterns
    loss = recipe_loss(recipe.loss, data.info, data.plan.batch_dice, recipe.source or None, patterns)
    network = _init_network(data, net_plan, options, device)
    optimizer = build_optimizer(network, recipe.optimiser)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    region_names = data.info.foreground_names
    ckpt = _start_state(fold_dir, options, data, fold, recipe)
    log = restore_training(ckpt, network, optimizer, scaler, options, fold_dir) if ckpt else TrainingLog(region_names)
    main = dist.is_main

    def write(msg: str) -> None:
        if main:
            append_log(log_path, msg)

    trains = log.epochs_done < recipe.epochs or not (fold_dir / "checkpoint_final.pt").is_file()
    if trains and main:
        _remove_stale_temporaries(fold_dir)
    if trains:
        write(f"{'resuming at' if ckpt else 'starting'} epoch {log.epochs_done} of {recipe.epochs}: "
              f"{configuration} fold {fold}, {len(data.split.train)} train / {len(data.split.val)} val cases, "
              f"patch {data.plan.patch_size}, batch {data.plan.batch_size} on {dist.world_size} process(es), "
              f"device {device}, precision {dtype_name(dtype)}, recipe {recipe.name} ({loss.describe()})")
        run = _Run(recipe, net_plan, DeepSupervisionLoss(loss, data.info.region_based, recipe.deep_supervision).to(device))
        _train_epochs(network, optimizer, scaler, data, options, run, dist, device, dtype, log, fold_dir, fold, write)
    validated = (fold_dir / "validation" / "summary.json").is_file()
    if options.validate and main and data.split.val and (trains or not validated):
        write(f"validating {len(data.split.val)} held-out case(s) with a sliding window")
        load = functools.partial(_load_case, data.config_dir, prior_dir=data.prior_dir)
        summary = validate_cases(_plain(network), data.split.val, load, data.info, data.plan, device,
                                 fold_dir / "validation", compute_dtype=dtype)
        for region, metrics in summary["mean"].items():
            write(f"validation mean {region}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if options.validate and main and data.split.val and fold != "all":   # a cross-validation fold: in raw space too
        _validate_raw(paths, fold_dir, int(fold), data.split.val, recipe, options, write)
    ddp.barrier()
    return fold_dir


def _validate_raw(paths: DatasetPaths, fold_dir: Path, fold: int, case_ids: list[str], recipe: Recipe,
                  options: TrainOptions, write) -> None:
    """The fold's cross-validation predictions and metrics in the raw images' space (skips what is up to date)."""
    report, evaluation = validate_raw(paths, fold_dir, fold, case_ids, recipe.name, options.device, options.precision,
                                      options.progress)
    for line in report.failed + evaluation.failed:
        write(f"raw-space validation: {line}")
    write(f"raw-space validation: {len(report.written)} case(s) predicted, {len(report.skipped)} up to date, "
          f"{len(evaluation.per_case)} scored -> {fold_dir / 'validation_raw'}")
    for region, metrics in evaluation.summary.get("mean", {}).items():
        write(f"raw-space validation mean {region}: Dice {metrics['dice']:.4f}, HD95 {metrics['hd95']:.2f} mm")


def _with_previous_stage(paths: DatasetPaths, data: FoldData, fold: int | str, options: TrainOptions, recipe: Recipe,
                         dist: ddp.DistInfo) -> FoldData:
    """A cascade fold's data with its previous stage's held-out segmentations, made (rank 0) where missing or stale;
    fold all, missing previous-stage folds and --augment-on device are refused in one line."""
    from autoseg.preprocessing import list_preprocessed_cases
    from autoseg.training.cascade import check_previous_stage, ensure_priors, prior_dir
    splits = load_or_create_splits(paths.splits_json, list_preprocessed_cases(data.config_dir))
    check_previous_stage(paths, data.plan, fold, splits, recipe.name)
    if options.augment_on != "cpu":
        raise fail(None, f"--augment-on {options.augment_on}: {data.plan.name} perturbs its previous stage's "
                   "segmentation on the CPU only", "leave out --augment-on (cpu is the default)")
    if dist.is_main:
        ensure_priors(paths, data.plan, splits, recipe.name, options.device, options.precision, options.progress)
    ddp.barrier()
    return replace(data, prior_dir=prior_dir(paths, data.plan, recipe.name))


@dataclass(frozen=True)
class _Run:
    """What the epochs of a run share: the effective recipe, the network plan it made, the loss it names."""

    recipe: Recipe
    net_plan: NetworkPlan
    loss_fn: nn.Module


def _plain(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


def _train_epochs(network: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, data: FoldData,
                  options: TrainOptions, run: _Run, dist: ddp.DistInfo, device: torch.device, dtype: torch.dtype | None,
                  log: TrainingLog, fold_dir: Path, fold: int | str, write) -> None:
    model = nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.enabled else network
    recipe, loss_fn = run.recipe, run.loss_fn
    show = options.progress and dist.is_main
    tracked = {"options": options.to_dict(), "recipe": recipe.to_dict(), "plan": data.plan}   # --logger
    with training_stream(batch_makers(data, options, dist, recipe), options.workers, options.augment_on, device) as stream, \
            open_tracker(options.logger if dist.is_main else "none", fold_dir, f"{data.dataset} {data.plan.name} "
                         f"fold {fold}", tracked, recipe.epochs) as tracker:
        for epoch in range(log.epochs_done, recipe.epochs):
            start = time.perf_counter()
            lr = epoch_lr(recipe.schedule, epoch, recipe.epochs, recipe.optimiser.lr)
            set_lr(optimizer, lr)
            train_loss, val_loss, dice = run_epoch(epoch, model, loss_fn, optimizer, scaler, stream, options, device,
                                                   data.info.region_based, dtype, len(log.region_names), show, recipe)
            # Ctrl-C or SIGTERM stop an epoch in progress at once (its checkpoint would not resume exactly; the
            # previous epoch's is on disk), but wait for a finished epoch's log line and checkpoints (seconds)
            with interrupts_deferred():
                best = log.add(train_loss, val_loss, dice, lr, time.perf_counter() - start)
                if dist.is_main:
                    write(log.line(epoch))
                    payload = training_payload(network, optimizer, scaler, data.plan, data.info, log, options, fold,
                                               data.dataset, recipe, run.net_plan)
                    save_checkpoint(fold_dir / "checkpoint_latest.pt", payload)
                    if best:
                        save_checkpoint(fold_dir / "checkpoint_best.pt", payload)
                        write(f"new best EMA pseudo-Dice {log.best_ema:.4f}")
            if dist.is_main:
                plot_progress(log, fold_dir / "progress.png")
                tracker.log_epoch(log, epoch, fold_dir / "progress.png")
    if dist.is_main:
        with interrupts_deferred():
            save_checkpoint(fold_dir / "checkpoint_final.pt",
                            training_payload(network, optimizer, scaler, data.plan, data.info, log, options, fold,
                                             data.dataset, recipe, run.net_plan))
            write(f"finished {log.epochs_done} epochs; wrote checkpoint_final.pt")
