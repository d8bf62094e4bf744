"""Training of one fold: :func:`train_fold`, the Python twin of ``autoseg-train``.

Per epoch: poly learning rate, ``iters_per_epoch`` SGD steps on augmented patches, ``val_iters``
patch-based validation steps (loss and pseudo-Dice, no augmentation), a log line, progress.png and
checkpoint_latest.pt (checkpoint_best.pt when the EMA pseudo-Dice improves). At the end
checkpoint_final.pt and a sliding-window validation of the held-out cases.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from autoseg.checkpoint import load_checkpoint, save_checkpoint
from autoseg.context import ContextSlices, expand_channels
from autoseg.data.augmentation import AugmentationParams, initial_patch_size
from autoseg.data.device_augmentation import training_stream
from autoseg.data.loader import Batch, BatchKey, BatchMaker, BatchStream
from autoseg.data.splits import Split, fold_cases, load_or_create_splits, parse_fold
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail, interrupts_deferred
from autoseg.locks import TRAINING, TRAINING_FIX, write_lock
from autoseg.paths import DatasetPaths
from autoseg.plans import ConfigurationPlan, Plans
from autoseg.precision import compute_dtype_for, dtype_name
from autoseg.training import distributed as ddp
from autoseg.training.loggers import open_tracker
from autoseg.training.losses import DeepSupervisionLoss, segmentation_loss
from autoseg.training.options import TrainOptions
from autoseg.training.progress import TrainingLog, append_log, plot_progress
from autoseg.training.schedule import poly_lr, set_lr
from autoseg.training.state import load_pretrained, restore_training, training_payload
from autoseg.training.validation import validate_cases


@dataclass(frozen=True)
class FoldData:
    """Everything one fold trains from: the plan, the dataset's labels, the case split and the cases' folder,
    and the dataset's folder name (``DatasetNNN_Name``), stored in checkpoints."""

    plan: ConfigurationPlan
    info: DatasetInfo
    split: Split
    config_dir: Path
    dataset: str


def load_fold_data(paths: DatasetPaths, configuration: str, fold: int | str, dist: ddp.DistInfo | None = None) -> FoldData:
    """Read plans.json, dataset.json and the preprocessed case list; splits.json is created once (by rank 0)."""
    from autoseg.preprocessing import list_preprocessed_cases
    plan = Plans.load(paths.plans_json).configuration(configuration, paths.plans_json)
    dataset_json = paths.dataset_json if paths.dataset_json.is_file() else paths.preprocessed / "dataset.json"
    info = DatasetInfo.load(dataset_json)
    config_dir = paths.config_dir(configuration)
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


def resolve_device(name: str, dist: ddp.DistInfo) -> torch.device:
    """``auto`` -> CUDA when available; under DDP on CUDA each rank takes GPU ``LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise fail(None, "--device cuda asked for, but no CUDA GPU is visible", "use --device cpu or auto")
        device = torch.device("cuda", dist.local_rank if dist.enabled else torch.device(name).index or 0)
        torch.cuda.set_device(device)
        return device
    if name != "cpu":
        raise fail(None, f"--device {name!r} is not known", "use cuda, cpu or auto")
    return torch.device("cpu")


def batch_makers(fold: FoldData, options: TrainOptions, dist: ddp.DistInfo) -> dict[str, BatchMaker]:
    """The train (augmented) and val (not augmented) batch makers of this rank."""
    plan = fold.plan
    patch = tuple(plan.patch_size)
    masked = expand_channels([i for i, n in enumerate(plan.normalization) if n.use_mask], plan.network.context_slices)
    aug = AugmentationParams(patch, tuple(plan.mirror_axes), masked, options.modality_dropout)
    oversample = plan.oversample_foreground if options.oversample is None else options.oversample
    share = ddp.rank_share(plan.batch_size, dist)
    load = functools.partial(_load_case, fold.config_dir, context=plan.network.context_slices)

    def maker(cases: list[str], augment: bool) -> BatchMaker:
        initial = initial_patch_size(patch) if augment else patch
        return BatchMaker(load, cases, fold.info, initial, aug, plan.batch_size, share, oversample, augment, options.seed)

    return {"train": maker(fold.split.train, options.augment), "val": maker(fold.split.val, False)}


def _load_case(config_dir: Path, case_id: str, context: int = 0):
    """A preprocessed case, memory-mapped; with 2.5D ``context`` its ``data[:, z]`` is slice z with its neighbours."""
    from autoseg.preprocessing import load_case
    case = load_case(config_dir, case_id, mmap=True)
    return replace(case, data=ContextSlices(case.data, context)) if context else case


def build_optimizer(network: nn.Module, options: TrainOptions) -> torch.optim.SGD:
    return torch.optim.SGD(network.parameters(), lr=options.lr, momentum=options.momentum,
                           nesterov=options.nesterov, weight_decay=options.weight_decay)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _to_device(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.as_tensor(batch.data).to(device, non_blocking=True)   # arrays, or tensors from --augment-on device
    target = torch.as_tensor(batch.target).to(device, non_blocking=True)
    return data, target


def train_step(network: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, batch: Batch, device: torch.device, grad_clip: float,
               dtype: torch.dtype | None) -> float:
    """One SGD step computing in ``dtype`` (None = fp32), gradient norm clipped to ``grad_clip``; returns the loss.

    The scaler is enabled for fp16 only; bf16 has fp32's range and needs no loss scaling.
    """
    data, target = _to_device(batch, device)
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, dtype):
        loss = loss_fn(network(data), target)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


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


def epoch_keys(epoch: int, options: TrainOptions, with_val: bool) -> Iterator[BatchKey]:
    for i in range(options.iters_per_epoch):
        yield BatchKey("train", epoch, i)
    if with_val:
        for i in range(options.val_iters):
            yield BatchKey("val", epoch, i)


def run_epoch(epoch: int, network: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, stream: BatchStream, options: TrainOptions, device: torch.device,
              region_based: bool, dtype: torch.dtype | None, n_regions: int,
              show: bool) -> tuple[float, float, list[float]]:
    """Train and validate one epoch; return train loss, val loss and pseudo-Dice per region (all ranks)."""
    with_val = options.val_iters > 0 and bool(stream.makers["val"].case_ids)
    keys = list(epoch_keys(epoch, options, with_val))
    train_losses, val_losses = [], []
    counts = torch.zeros(3, n_regions, dtype=torch.float64)
    network.train()
    bar = tqdm(total=len(keys), desc=f"epoch {epoch}", leave=False, disable=not show, dynamic_ncols=True)
    for key, batch in zip(keys, stream.batches(keys)):
        if key.stream == "train":
            train_losses.append(train_step(network, loss_fn, optimizer, scaler, batch, device, options.grad_clip,
                                           dtype))
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


def _init_network(fold: FoldData, options: TrainOptions, device: torch.device) -> nn.Module:
    from autoseg.network import network_for_dataset, output_layers_for_dataset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        network = network_for_dataset(fold.plan.network, fold.info, deep_supervision=True)
    if options.pretrained:
        load_pretrained(network, Path(options.pretrained), output_layers_for_dataset(fold.plan.network, fold.info))
    return network.to(device)


def _remove_stale_temporaries(fold_dir: Path) -> None:
    """Delete hidden checkpoint temporaries a killed run left (``.checkpoint_*.tmp.pt``).

    Safe here and not in prediction: one process (rank 0) writes a fold folder, while several
    ``--shard`` jobs may share a prediction folder.
    """
    for tmp in fold_dir.glob(".checkpoint_*.tmp.pt"):
        tmp.unlink(missing_ok=True)


def _start_state(fold_dir: Path, options: TrainOptions, data: FoldData, fold: int | str) -> dict | None:
    """The checkpoint to continue from, None to start fresh; refuse to silently overwrite a run, or to continue
    one of another plan, dataset or fold."""
    latest = fold_dir / "checkpoint_latest.pt"
    if not latest.is_file():
        return None
    from dataclasses import asdict
    ckpt = load_checkpoint(latest, asdict(data.plan), dataset=data.dataset, fold=fold)
    finished = ckpt["epoch"] >= options.epochs
    if not options.resume and not finished:
        raise fail(latest, f"a run of {ckpt['epoch']} epoch(s) exists in this fold folder",
                   "add --resume to continue it (a larger --epochs extends a finished run), or delete the folder")
    return ckpt


def train_fold(paths: DatasetPaths, configuration: str, fold: int | str, options: TrainOptions) -> Path:
    """Train (or resume, or extend) one fold and validate it; return the fold folder.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 writes the files.
    """
    fold = parse_fold(fold)
    dist = ddp.dist_from_env()
    device = resolve_device(options.device, dist)
    with ddp.process_group(dist, device), write_lock(paths.fold_dir(configuration, fold), TRAINING, TRAINING_FIX,
                                                     enabled=dist.is_main):   # one trainer per fold
        return _train_fold(paths, configuration, fold, options, dist, device)


def _train_fold(paths: DatasetPaths, configuration: str, fold: int | str, options: TrainOptions, dist: ddp.DistInfo,
                device: torch.device) -> Path:
    data = load_fold_data(paths, configuration, fold, dist)
    fold_dir = paths.fold_dir(configuration, fold)
    log_path = fold_dir / "log.txt"
    dtype = compute_dtype_for(options.precision, device)
    network = _init_network(data, options, device)
    optimizer = build_optimizer(network, options)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    region_names = data.info.foreground_names
    ckpt = _start_state(fold_dir, options, data, fold)
    log = restore_training(ckpt, network, optimizer, scaler, options, fold_dir) if ckpt else TrainingLog(region_names)
    main = dist.is_main

    def write(msg: str) -> None:
        if main:
            append_log(log_path, msg)

    trains = log.epochs_done < options.epochs or not (fold_dir / "checkpoint_final.pt").is_file()
    if trains and main:
        _remove_stale_temporaries(fold_dir)
    if trains:
        write(f"{'resuming at' if ckpt else 'starting'} epoch {log.epochs_done} of {options.epochs}: "
              f"{configuration} fold {fold}, {len(data.split.train)} train / {len(data.split.val)} val cases, "
              f"patch {data.plan.patch_size}, batch {data.plan.batch_size} on {dist.world_size} process(es), "
              f"device {device}, precision {dtype_name(dtype)}")
        _train_epochs(network, optimizer, scaler, data, options, dist, device, dtype, log, fold_dir, fold, write)
    validated = (fold_dir / "validation" / "summary.json").is_file()
    if options.validate and main and data.split.val and (trains or not validated):
        write(f"validating {len(data.split.val)} held-out case(s) with a sliding window")
        load = functools.partial(_load_case, data.config_dir)
        summary = validate_cases(_plain(network), data.split.val, load, data.info, data.plan, device,
                                 fold_dir / "validation", compute_dtype=dtype)
        for region, metrics in summary["mean"].items():
            write(f"validation mean {region}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    ddp.barrier()
    return fold_dir


def _plain(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


def _train_epochs(network: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, data: FoldData,
                  options: TrainOptions, dist: ddp.DistInfo, device: torch.device, dtype: torch.dtype | None,
                  log: TrainingLog, fold_dir: Path, fold: int | str, write) -> None:
    model = nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.enabled else network
    loss_fn = DeepSupervisionLoss(segmentation_loss(data.info.region_based, data.plan.batch_dice, options.dice), data.info.region_based)
    show = options.progress and dist.is_main
    tracked = {"options": options.to_dict(), "plan": data.plan}   # --logger: the run's configuration
    with training_stream(batch_makers(data, options, dist), options.workers, options.augment_on, device) as stream, \
            open_tracker(options.logger if dist.is_main else "none", fold_dir, f"{data.dataset} {data.plan.name} "
                         f"fold {fold}", tracked, options.epochs) as tracker:
        for epoch in range(log.epochs_done, options.epochs):
            start = time.perf_counter()
            lr = poly_lr(epoch, options.epochs, options.lr, options.poly_exponent)
            set_lr(optimizer, lr)
            train_loss, val_loss, dice = run_epoch(epoch, model, loss_fn, optimizer, scaler, stream, options, device,
                                                   data.info.region_based, dtype, len(log.region_names), show)
            # Ctrl-C or SIGTERM stop an epoch in progress at once (its checkpoint would not resume exactly; the
            # previous epoch's is on disk), but wait for a finished epoch's log line and checkpoints (seconds)
            with interrupts_deferred():
                best = log.add(train_loss, val_loss, dice, lr, time.perf_counter() - start)
                if dist.is_main:
                    write(log.line(epoch))
                    payload = training_payload(network, optimizer, scaler, data.plan, data.info, log, options, fold,
                                               data.dataset)
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
                                             data.dataset))
            write(f"finished {log.epochs_done} epochs; wrote checkpoint_final.pt")
