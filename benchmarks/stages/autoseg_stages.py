"""autoseg side of the benchmark: one measurement per process, run with autoseg's own Python.

    python benchmarks/stages/autoseg_stages.py STAGE --work benchmarks/work

Same stages, inputs, thread counts and timed spans as nnunet_stages.py. Network-dependent stages use
the default BraTS topology (see _common). A stage whose autoseg module has not landed yet reports
``missing`` instead of a number.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

VRAM_GB = 8.0  # nnU-Net's default planning target, so both planners aim at the same GPU


def dataset_paths(work: Path):
    from autoseg.paths import DatasetPaths

    return DatasetPaths(work.resolve() / "autoseg", c.DATASET_NAME)


def default_network_plan(shape: c.PlanShape = c.PLANS["default"]):
    from autoseg.plans import NetworkPlan

    n = len(shape.features)
    return NetworkPlan(arch="unet", features=list(shape.features), kernel_sizes=[[3] * len(shape.patch)] * n,
                       strides=[list(s) for s in shape.strides], n_conv_encoder=[2] * n, n_conv_decoder=[2] * (n - 1))


def fingerprint_and_plan(work: Path) -> dict:
    from autoseg.dataset import DatasetInfo
    from autoseg.fingerprint import compute_fingerprint
    from autoseg.planning import plan_dataset

    paths = dataset_paths(work)
    out: dict = {}
    with c.timed(out):
        fp = compute_fingerprint(paths.raw, workers=c.threads())
        fp.save(paths.fingerprint_json)
        plans = plan_dataset(fp, DatasetInfo.load(paths.dataset_json), VRAM_GB, "benchmark")
        plans.save(paths.plans_json)
    fullres = plans.configurations["3d_fullres"]
    out["plan"] = f"patch {fullres.patch_size} batch {fullres.batch_size}"
    return out


def default_topology_plans(work: Path, shape: c.PlanShape = c.PLANS["default"]):
    """autoseg's own plans for this dataset with ``shape.configuration`` set to ``shape`` (by default 3d_fullres
    with the default BraTS topology; the coarse plan is 3d_fullres at 3 mm with its own topology)."""
    from autoseg.plans import Plans

    paths = dataset_paths(work)
    if not paths.plans_json.is_file():
        fingerprint_and_plan(work)
    plans = Plans.load(paths.plans_json)
    cfg = replace(plans.configurations["3d_fullres"], name=shape.configuration, patch_size=list(shape.patch),
                  batch_size=shape.batch, network=default_network_plan(shape))
    if shape.spacing is not None:
        cfg = replace(cfg, spacing=[shape.spacing] * len(shape.patch))
    return replace(plans, configurations={**plans.configurations, shape.configuration: cfg})


def preprocess(work: Path) -> dict:
    from autoseg.preprocessing import preprocess_dataset

    paths = dataset_paths(work)
    default_topology_plans(work).save(paths.plans_json)
    shutil.rmtree(paths.config_dir("3d_fullres"), ignore_errors=True)
    n = len(c.case_ids(work))
    out: dict = {}
    with c.timed(out, "total_seconds"):
        preprocess_dataset(paths, "3d_fullres", workers=c.threads())
    out["seconds"] = out["total_seconds"] / n
    out["cases"] = n
    return out


def ensure_preprocessed(work: Path, shape: c.PlanShape = c.PLANS["default"]) -> None:
    """plans.json holds ``shape``'s configuration, and every case is preprocessed for it."""
    from autoseg.preprocessing import preprocess_dataset
    from autoseg.preprocessing.storage import list_preprocessed_cases

    paths = dataset_paths(work)
    default_topology_plans(work, shape).save(paths.plans_json)
    if len(list_preprocessed_cases(paths.config_dir(shape.configuration))) < len(c.case_ids(work)):
        preprocess_dataset(paths, shape.configuration, workers=c.threads())


def dataloader(work: Path, batches: int, warmup: int) -> dict:
    """Training batches per second from autoseg's loader + augmentation (2 worker processes)."""
    from autoseg.data.loader import BatchKey, BatchStream
    from autoseg.training.distributed import dist_from_env
    from autoseg.training.options import TrainOptions
    from autoseg.training.trainer import batch_makers, load_fold_data

    ensure_preprocessed(work)
    paths = dataset_paths(work)
    default_topology_plans(work).save(paths.plans_json)
    fold = load_fold_data(paths, "3d_fullres", "all")
    makers = batch_makers(fold, TrainOptions(workers=c.threads()), dist_from_env())
    keys = (BatchKey("train", 0, i) for i in range(warmup + batches))
    out: dict = {"batches": batches}
    with BatchStream({"train": makers["train"]}, workers=c.threads()) as stream:
        it = stream.batches(keys)
        for _ in range(warmup):
            next(it)
        with c.timed(out, "total_seconds"):
            for _ in range(batches):
                batch = next(it)
    out["batches_per_s"] = batches / out["total_seconds"]
    out["batch_shape"] = list(batch.data.shape)
    return out


def train_step(iters: int, precision: str = "auto") -> dict:
    """autoseg.training.trainer.train_step (forward, DS Dice+BCE loss, backward, clip, SGD) on a fixed batch,
    computing in what ``--precision`` gives on this machine (``auto``: bf16 on a CPU with native bf16)."""
    import torch

    from autoseg.data.loader import Batch
    from autoseg.network import build_network
    from autoseg.precision import compute_dtype_for, dtype_name
    from autoseg.training.losses import DeepSupervisionLoss, segmentation_loss
    from autoseg.training.options import TrainOptions
    from autoseg.training.trainer import build_optimizer
    from autoseg.training.trainer import train_step as step

    torch.set_num_threads(c.threads())
    torch.manual_seed(0)
    net = build_network(default_network_plan(), c.CHANNELS, c.REGIONS, deep_supervision=True)
    net.train()
    options = TrainOptions(device="cpu", precision=precision)
    cpu = torch.device("cpu")
    dtype = compute_dtype_for(options.precision, cpu)
    optimizer = build_optimizer(net, options.effective_recipe().optimiser)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    loss = DeepSupervisionLoss(segmentation_loss(region_based=True, batch_dice=False), region_based=True)
    data, targets = c.synthetic_batch()
    batch = Batch(data.numpy(), targets[0].to(torch.uint8).numpy())  # autoseg downsamples targets in the loss
    step(net, loss, optimizer, scaler, batch, cpu, options.grad_clip, dtype)  # warm-up
    out: dict = {"iters": iters, "precision": dtype_name(dtype)}
    with c.timed(out, "total_seconds"):
        for _ in range(iters):
            step(net, loss, optimizer, scaler, batch, cpu, options.grad_clip, dtype)
    out["seconds"] = out["total_seconds"] / iters
    return out


def train_loop(a, shape: c.PlanShape, precision: str) -> dict:
    """autoseg's own training loop (``train_fold``: its loader with augmentation in ``--workers`` processes or
    on the device, steps, per-epoch log line and checkpoint) on fold all: two epochs of ``--iters`` iterations,
    no validation. The second epoch is timed by the loop itself (its log's epoch time, checkpointing excluded);
    its CPU use (all processes, workers included) is sampled over the same span."""
    import torch

    from autoseg.checkpoint import load_checkpoint
    from autoseg.precision import compute_dtype_for, dtype_name
    from autoseg.training import TrainOptions, train_fold

    torch.set_num_threads(c.threads())
    ensure_preprocessed(a.work, shape)
    paths = dataset_paths(a.work)
    shutil.rmtree(paths.results, ignore_errors=True)
    workers = c.threads() if a.workers is None else a.workers
    options = TrainOptions(epochs=2, iters_per_epoch=a.iters, val_iters=0, workers=workers, device=a.device,
                           precision=precision, augment_on=a.augment_on, validate=False, progress=False)

    logs: list[Path] = []

    def second_epoch_logged() -> bool:  # polled by the trace: the loop logs epoch 1 as soon as it ends
        logs[:] = logs or list(paths.results.rglob("log.txt"))
        return any("epoch 1: train loss" in f.read_text() for f in logs)

    with c.CpuTrace(marks={"epoch 1": second_epoch_logged}) as trace:
        fold_dir = train_fold(paths, shape.configuration, "all", options)
    seconds = load_checkpoint(fold_dir / "checkpoint_final.pt")["log"]["epoch_time"][1]
    end = trace.marked["epoch 1"]
    return {"iters": a.iters, "seconds": seconds, "iters_per_s": a.iters / seconds,
            "cpu_use": trace.cpu_seconds(end - seconds, end) / seconds,
            "precision": dtype_name(compute_dtype_for(precision, torch.device(a.device))),
            "plan": f"patch {list(shape.patch)} batch {shape.batch}", "device": a.device,
            "augment_on": a.augment_on, "workers": workers, "gpu_peak_gb": c.gpu_peak_gb(a.device)}


def inference(work: Path, case: str | None, tta: bool, shape: c.PlanShape = c.PLANS["default"],
              device: str = "cpu") -> dict:
    """autoseg.inference.predict_folder on one full-size raw case: read, preprocess, sliding window
    (step 0.5, Gaussian), regions to labels, write NIfTI. Random weights: speed does not depend on them.
    Precision is the product default (``auto``: fp16 on CUDA, bf16 autocast on a CPU with native bf16, else fp32)."""
    import torch

    from autoseg.dataset import DatasetInfo
    from autoseg.inference.predictor import Predictor, predict_folder
    from autoseg.network import build_network
    from autoseg.precision import compute_dtype_for

    torch.set_num_threads(c.threads())
    torch.manual_seed(0)
    cfg = default_topology_plans(work, shape).configurations[shape.configuration]
    info = DatasetInfo.load(dataset_paths(work).dataset_json)
    dev = torch.device(device)
    net = build_network(cfg.network, c.CHANNELS, c.REGIONS, deep_supervision=False).eval().to(dev)
    predictor = Predictor(cfg, info, [net], dev, mirroring=tta, step=0.5,
                          compute_dtype=compute_dtype_for("auto", dev))
    case = case or c.case_ids(work)[0]
    in_dir, out_dir = (work / "autoseg" / name for name in ("predict_input", "pred_tta" if tta else "pred"))
    for d in (in_dir, out_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for f in c.case_files(work, case):
        (in_dir / Path(f).name).symlink_to(Path(f).resolve())
    out: dict = {"case": case, "precision": str(predictor.compute_dtype or torch.float32)}
    with c.timed(out):
        report = predict_folder(predictor, in_dir, out_dir, progress=False)
    assert report.written == [case], report
    out["gpu_peak_gb"] = c.gpu_peak_gb(device)
    return out


if __name__ == "__main__":
    c.main(__doc__, "autoseg", fingerprint_plan=fingerprint_and_plan, preprocess=preprocess, dataloader=dataloader,
           train_step=train_step, inference=inference, train_loop=train_loop)
