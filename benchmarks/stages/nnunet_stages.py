"""nnU-Net v2 2.8.1 side of the benchmark: one measurement per process, run with benchmarks/.venv-nnunet.

    benchmarks/.venv-nnunet/bin/python benchmarks/stages/nnunet_stages.py STAGE --work benchmarks/work

Stages: fingerprint_plan, preprocess, dataloader, train_step, train_loop (and its fp32/coarse variants),
inference, inference_tta. Only nnU-Net's public Python API and its top-level nnUNetTrainer are used (no trainer
lookup by name, which needs the torchvision workaround). Network-dependent stages use the default BraTS topology
or the plan named by --plan (see _common).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def set_nnunet_env(work: Path) -> None:
    """nnU-Net reads its folders from the environment at import time; raw = autoseg's raw folder."""
    base = work.resolve() / "nnunet"
    os.environ["nnUNet_raw"] = str(work.resolve() / "autoseg" / "raw")
    os.environ["nnUNet_preprocessed"] = str(base / "preprocessed")
    os.environ["nnUNet_results"] = str(base / "results")
    for k in ("nnUNet_preprocessed", "nnUNet_results"):
        Path(os.environ[k]).mkdir(parents=True, exist_ok=True)


def plans_path() -> Path:
    return Path(os.environ["nnUNet_preprocessed"]) / c.DATASET_NAME / "nnUNetPlans.json"


def fingerprint_and_plan() -> dict:
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
    )

    out: dict = {}
    with c.timed(out):
        extract_fingerprint_dataset(c.DATASET_ID, DatasetFingerprintExtractor, num_processes=c.threads(),
                                    check_dataset_integrity=False, clean=True, verbose=False,
                                    show_progress_bar=False)
        plan_experiment_dataset(c.DATASET_ID, ExperimentPlanner)
    fullres = _load_json(plans_path())["configurations"]["3d_fullres"]
    out["plan"] = f"patch {fullres['patch_size']} batch {fullres['batch_size']}"
    return out


def _load_json(path):
    import json

    return json.loads(Path(path).read_text())


def ensure_plans() -> None:
    if not plans_path().is_file():
        fingerprint_and_plan()


def default_topology_plans(shape: c.PlanShape = c.PLANS["default"]) -> dict:
    """nnU-Net's own plans for this dataset with ``shape.configuration`` set to ``shape`` (by default 3d_fullres
    with the default BraTS topology; another configuration starts as a copy of 3d_fullres with its own data)."""
    ensure_plans()
    plans = _load_json(plans_path())
    configs = plans["configurations"]
    if shape.configuration not in configs:
        configs[shape.configuration] = copy.deepcopy(configs["3d_fullres"])
        configs[shape.configuration]["data_identifier"] = f"nnUNetPlans_{shape.configuration}"
    cfg = configs[shape.configuration]
    cfg["patch_size"], cfg["batch_size"] = list(shape.patch), shape.batch
    if shape.spacing is not None:
        cfg["spacing"] = [shape.spacing] * len(shape.patch)
    n = len(shape.features)
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update(n_stages=n, features_per_stage=list(shape.features), strides=[list(s) for s in shape.strides],
                kernel_sizes=[[3] * len(shape.patch)] * n, n_conv_per_stage=[2] * n,
                n_conv_per_stage_decoder=[2] * (n - 1))
    return plans


def dataset_json() -> dict:
    return _load_json(Path(os.environ["nnUNet_raw"]) / c.DATASET_NAME / "dataset.json")


def preprocess(work: Path) -> dict:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    ensure_plans()
    shutil.rmtree(Path(os.environ["nnUNet_preprocessed"]) / c.DATASET_NAME / "nnUNetPlans_3d_fullres",
                  ignore_errors=True)
    n = len(c.case_ids(work))
    out: dict = {}
    with c.timed(out, "total_seconds"):
        preprocess_dataset(c.DATASET_ID, "nnUNetPlans", ["3d_fullres"], [c.threads()], verbose=False,
                           show_progress_bar=False)
    out["seconds"] = out["total_seconds"] / n
    out["cases"] = n
    return out


def ensure_preprocessed(work: Path, shape: c.PlanShape = c.PLANS["default"]) -> None:
    """Every case preprocessed for ``shape.configuration`` (written into the plans file first if it is not there)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    on_disk = _load_json(plans_path()) if plans_path().is_file() else None
    if on_disk is None or shape.configuration not in on_disk["configurations"]:
        plans_path().write_text(json.dumps(default_topology_plans(shape), indent=1))
    cfg = _load_json(plans_path())["configurations"][shape.configuration]
    folder = Path(os.environ["nnUNet_preprocessed"]) / c.DATASET_NAME / cfg["data_identifier"]
    if len(list(folder.glob("*.b2nd"))) < 2 * len(c.case_ids(work)):
        if shape.configuration == "3d_fullres":
            preprocess(work)
        else:
            preprocess_dataset(c.DATASET_ID, "nnUNetPlans", [shape.configuration], [c.threads()], verbose=False,
                               show_progress_bar=False)


def trainer(shape: c.PlanShape = c.PLANS["default"], device: str = "cpu"):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = default_topology_plans(shape)
    plans["continue_training"] = False  # what nnUNetv2_train's run_training puts in (2.8.1)
    t = nnUNetTrainer(plans, shape.configuration, "all", dataset_json(), device=torch.device(device))
    t.initialize()
    torch.set_num_threads(c.threads())
    return t


def dataloader(work: Path, batches: int, warmup: int) -> dict:
    """Training batches per second from nnU-Net's own loader + augmentation (nnUNet_n_proc_DA workers)."""
    ensure_preprocessed(work)
    t = trainer()
    dl_tr, dl_val = t.get_dataloaders()
    dl_val._finish()  # only the training pipeline is measured
    for _ in range(warmup):
        next(dl_tr)
    out: dict = {"batches": batches}
    with c.timed(out, "total_seconds"):
        for _ in range(batches):
            batch = next(dl_tr)
    out["batches_per_s"] = batches / out["total_seconds"]
    out["batch_shape"] = list(batch["data"].shape)
    dl_tr._finish()
    return out


def train_step(iters: int, precision: str = "auto") -> dict:
    """nnUNetTrainer.train_step (forward, DS Dice+BCE loss, backward, clip, SGD) on a fixed batch.

    fp32 whatever ``precision`` says: nnU-Net autocasts on CUDA only and has no option for it."""
    t = trainer()
    data, targets = c.synthetic_batch()
    t.network.train()
    t.train_step({"data": data, "target": targets})  # warm-up
    out: dict = {"iters": iters, "precision": "fp32"}
    with c.timed(out, "total_seconds"):
        for _ in range(iters):
            t.train_step({"data": data, "target": targets})
    out["seconds"] = out["total_seconds"] / iters
    return out


def train_loop(a, shape: c.PlanShape, precision: str) -> dict:
    """nnU-Net's own training loop, the body of ``nnUNetTrainer.run_training``: on_epoch_start,
    on_train_epoch_start, ``train_step`` on its dataloader's batches (augmentation in nnUNet_n_proc_DA
    processes), on_train_epoch_end (loss logging), for two epochs of ``--iters`` iterations on fold all; the
    second timed, with its CPU use (all processes, workers included). Validation, checkpointing and the epoch
    summary are skipped, as on autoseg's side. fp32 on a CPU whatever ``precision`` says (nnU-Net autocasts on
    CUDA only, in fp16)."""
    import torch
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    ensure_preprocessed(a.work, shape)
    if a.workers is not None:
        os.environ["nnUNet_n_proc_DA"] = str(a.workers)
    t = trainer(shape, a.device)
    t.num_iterations_per_epoch = a.iters
    t.on_train_start()

    def epoch() -> None:
        t.on_epoch_start()
        t.on_train_epoch_start()
        t.on_train_epoch_end([t.train_step(next(t.dataloader_train)) for _ in range(a.iters)])
        t.current_epoch += 1  # what on_epoch_end does last

    epoch()
    cpu, start = c.tree_cpu_seconds(), time.perf_counter()
    epoch()
    seconds = time.perf_counter() - start
    cpu = c.tree_cpu_seconds() - cpu
    out = {"iters": a.iters, "seconds": seconds, "iters_per_s": a.iters / seconds, "cpu_use": cpu / seconds,
           "precision": "fp16" if t.device.type == "cuda" else "fp32",
           "plan": f"patch {list(shape.patch)} batch {shape.batch}", "device": a.device, "augment_on": "cpu",
           "workers": get_allowed_n_proc_DA(), "gpu_peak_gb": c.gpu_peak_gb(a.device)}
    t.dataloader_train._finish()
    t.dataloader_val._finish()
    return out


def inference(work: Path, case: str | None, tta: bool, shape: c.PlanShape = c.PLANS["default"],
              device: str = "cpu") -> dict:
    """nnUNetPredictor.predict_from_files on one full-size raw case: preprocessing, sliding window
    (step 0.5, Gaussian), export to NIfTI. Weights are random: speed does not depend on them."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.manual_seed(0)
    plans = PlansManager(default_topology_plans(shape))
    cfg = plans.get_configuration(shape.configuration)
    net = get_network_from_plans(cfg.network_arch_class_name, cfg.network_arch_init_kwargs,
                                 cfg.network_arch_init_kwargs_req_import, c.CHANNELS, c.REGIONS,
                                 deep_supervision=False)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                device=torch.device(device), verbose=False, allow_tqdm=False)
    predictor.manual_initialization(net, plans, cfg, [net.state_dict()], dataset_json(), "nnUNetTrainer",
                                    (0, 1, 2))
    case = case or c.case_ids(work)[0]
    out_dir = work / "nnunet" / ("pred_tta" if tta else "pred")
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    torch.set_num_threads(c.threads())
    # nnU-Net autocasts on CUDA only (fp16)
    out: dict = {"case": case, "precision": "torch.float16" if device.startswith("cuda") else "torch.float32"}
    with c.timed(out):
        predictor.predict_from_files([c.case_files(work, case)], [str(out_dir / case)], save_probabilities=False,
                                     overwrite=True, num_processes_preprocessing=1,
                                     num_processes_segmentation_export=1)
    assert (out_dir / f"{case}.nii.gz").is_file()
    out["gpu_peak_gb"] = c.gpu_peak_gb(device)
    return out


def fresh_fingerprint_and_plan(work: Path) -> dict:
    shutil.rmtree(Path(os.environ["nnUNet_preprocessed"]) / c.DATASET_NAME, ignore_errors=True)
    return fingerprint_and_plan()


if __name__ == "__main__":
    c.main(__doc__, "nnU-Net", fingerprint_plan=fresh_fingerprint_and_plan, preprocess=preprocess,
           dataloader=dataloader, train_step=train_step, inference=inference, train_loop=train_loop,
           setup=set_nnunet_env)
