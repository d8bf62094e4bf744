"""Equal-budget real-data check against nnU-Net v2 (issue 14, item 2; docs/accuracy.md).

The public labelled BraTS cases (../shared/data/brats) become one nnU-Net v2 raw dataset at 3 mm
isotropic (labels 1 oedema, 2 necrosis, 3 enhancing; regions [1,2,3], [2,3], 3, as nnU-Net's
Dataset137): the four cases other than BraTS19_CBICA_BHQ_1 train, BHQ_1 is predicted from its
original 1 mm images and scored there. Both tools get the same plan (patch 48x64x48, batch 2, 4
stages, 32..256 features), one epoch of 250 iterations on fold ``all``, CPU, fp32, no TTA.

    python benchmarks/real_data.py dataset --work W          # raw dataset + BHQ_1 test input/reference
    python benchmarks/real_data.py autoseg --work W --run 0  # plan, preprocess (once), train, predict, score
    python benchmarks/real_data.py autoseg --work W --run 0 --dice linear   # 1 - Dice on the regions (nnU-Net's)
    python benchmarks/real_data.py nnunet --work W --run 0   # the same with benchmarks/.venv-nnunet
    python benchmarks/real_data.py table --work W            # markdown table of all finished runs

Each run writes ``W/results/TOOL_runN.json`` (Dice and HD95 per region, wall times). The data stay
under W (never inside the project). nnU-Net has no seed option: its runs differ by chance alone;
autoseg's run N uses ``--seed N``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BRATS = Path(os.environ.get("AUTOSEG_BRATS_DIR", HERE.parent.parent / "shared" / "data" / "brats"))  # as tests/conftest.py
DATASET_ID, DATASET = 140, "Dataset140_BraTS3mm"
TEST_CASE = "BraTS19_CBICA_BHQ_1"
SPACING = 3.0
PATCH, BATCH, FEATURES = [48, 64, 48], 2, [32, 64, 128, 256]
ITERATIONS = 250
# BraTS 2019-2021 (1 necrosis, 2 oedema, 4 enhancing) and 2023+ (3 enhancing) -> Dataset137's convention
TO_NNUNET = {"brats2020": {0: 0, 1: 2, 2: 1, 4: 3}, "brats2023": {0: 0, 1: 2, 2: 1, 3: 3}}
CHANNELS = {"brats2020": ("t1", "t1ce", "t2", "flair"), "brats2023": ("t1n", "t1c", "t2w", "t2f")}
REGIONS = {"whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing tumour": 3}


def _cases() -> list[tuple[str, Path, str]]:
    out = []
    for folder in sorted((BRATS / "labelled").iterdir()):
        out.append((folder.name, folder, "brats2020"))
    for folder in sorted((BRATS / "labelled-2023").iterdir()):
        out.append((folder.name, folder, "brats2023"))
    return out


def _files(folder: Path, convention: str) -> tuple[list[Path], Path]:
    sep = "-" if convention == "brats2023" else "_"
    images = [folder / f"{folder.name}{sep}{c}.nii.gz" for c in CHANNELS[convention]]
    return images, folder / f"{folder.name}{sep}seg.nii.gz"


def _resample(img, spacing: float, nearest: bool):
    import SimpleITK as sitk
    size = [int(round(n * s / spacing)) for n, s in zip(img.GetSize(), img.GetSpacing())]
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
                         img.GetOrigin(), [spacing] * 3, img.GetDirection(), 0, img.GetPixelID())


def _relabel(img, mapping: dict[int, int]):
    import numpy as np
    import SimpleITK as sitk
    arr = sitk.GetArrayFromImage(img)
    out = np.zeros(arr.shape, np.uint8)
    for src, dst in mapping.items():
        out[arr == src] = dst
    res = sitk.GetImageFromArray(out)
    res.CopyInformation(img)
    return res


def make_dataset(work: Path) -> None:
    """Raw dataset (training cases at 3 mm) plus BHQ_1 at 1 mm as test input and reference."""
    import SimpleITK as sitk
    raw = work / "raw" / DATASET
    if (raw / "dataset.json").is_file():
        print(f"{raw} exists")
        return
    tmp = raw.with_name(raw.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    n_train = 0
    for case, folder, convention in _cases():
        images, seg = _files(folder, convention)
        label = _relabel(sitk.ReadImage(str(seg)), TO_NNUNET[convention])
        if case == TEST_CASE:
            for c, path in enumerate(images):
                (tmp / "imagesTs").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, tmp / "imagesTs" / f"{case}_{c:04d}.nii.gz")
            (tmp / "labelsTs").mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(label, str(tmp / "labelsTs" / f"{case}.nii.gz"))
            continue
        for c, path in enumerate(images):
            (tmp / "imagesTr").mkdir(parents=True, exist_ok=True)
            img = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
            sitk.WriteImage(_resample(img, SPACING, nearest=False), str(tmp / "imagesTr" / f"{case}_{c:04d}.nii.gz"))
        (tmp / "labelsTr").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(_resample(label, SPACING, nearest=True), str(tmp / "labelsTr" / f"{case}.nii.gz"))
        n_train += 1
    dataset_json = {"name": "BraTS3mm", "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
                    "labels": {"background": 0, **REGIONS}, "regions_class_order": [1, 2, 3],
                    "numTraining": n_train, "file_ending": ".nii.gz"}
    (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    tmp.rename(raw)
    print(f"wrote {raw}: {n_train} training cases at {SPACING} mm, test case {TEST_CASE} at 1 mm")


def _run(cmd: list[str], log: Path, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        subprocess.run([str(c) for c in cmd], check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    return time.perf_counter() - t0


def _score(pred_dir: Path, work: Path) -> dict:
    """Dice and HD95 per region of the BHQ_1 prediction in its original 1 mm space (autoseg's metrics)."""
    from autoseg.dataset import DatasetInfo
    from autoseg.evaluation.evaluate import evaluate_folder
    raw = work / "raw" / DATASET
    out = pred_dir.with_name(pred_dir.name + "_eval")
    result = evaluate_folder(pred_dir, raw / "labelsTs", DatasetInfo.load(raw / "dataset.json"), out, workers=1)
    return {region: {"dice": m["dice"], "hd95": m["hd95"]} for region, m in result.summary["mean"].items()
            if region in REGIONS}


def _autoseg_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def autoseg_tool(dice: str) -> str:
    """Result name of an autoseg run: ``autoseg`` (its default -log Dice) or ``autoseg-linear`` (nnU-Net's 1 - Dice)."""
    return "autoseg" if dice == "log" else f"autoseg-{dice}"


def run_autoseg(work: Path, run: int, dice: str = "log") -> dict:
    home = work / "autoseg_home"
    tool = autoseg_tool(dice)
    log = work / "logs" / f"{tool}_run{run}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    raw_link = home / "raw" / DATASET
    if not raw_link.exists():
        raw_link.parent.mkdir(parents=True, exist_ok=True)
        raw_link.symlink_to((work / "raw" / DATASET).resolve())
    h = ["--home", home, "-d", DATASET_ID]
    plans = home / "preprocessed" / DATASET / "plans.json"
    if not plans.is_file():
        _run([_autoseg_bin("autoseg-plan"), *h], log)
        _set_autoseg_plan(plans)
        _run([_autoseg_bin("autoseg-preprocess"), *h, "-c", "3d_fullres", "-np", "2"], log)
    fold_dir = home / "results" / DATASET / "3d_fullres" / "fold_all"
    shutil.rmtree(fold_dir, ignore_errors=True)
    train_s = _run([_autoseg_bin("autoseg-train"), "3d_fullres", "all", *h, "--epochs", 1, "--iters-per-epoch",
                    ITERATIONS, "--val-iters", 50, "--precision", "fp32", "--device", "cpu", "--seed", run,
                    "--dice", dice, "--no-validation"], log)
    pred = work / "pred" / f"{tool}_run{run}"
    shutil.rmtree(pred, ignore_errors=True)
    pred_s = _run([_autoseg_bin("autoseg-predict"), "-i", work / "raw" / DATASET / "imagesTs", "-o", pred, *h,
                   "-c", "3d_fullres", "-f", "all", "--no-tta", "--precision", "fp32", "--device", "cpu"], log)
    shutil.copyfile(fold_dir / "log.txt", work / "logs" / f"{tool}_run{run}_train_log.txt")
    return {"tool": tool, "run": run, "train_s": train_s, "predict_s": pred_s, "scores": _score(pred, work)}


def _set_autoseg_plan(plans: Path) -> None:
    """The shared plan: 3 mm, patch 48x64x48, batch 2, 4 stages, 32..256 (edited like a user would)."""
    d = json.loads(plans.read_text())
    cfg = d["configurations"]["3d_fullres"]
    cfg["patch_size"], cfg["batch_size"], cfg["spacing"] = PATCH, BATCH, [SPACING] * 3
    net = cfg["network"]
    net.update(features=FEATURES, kernel_sizes=[[3, 3, 3]] * 4, strides=[[1, 1, 1]] + [[2, 2, 2]] * 3,
               n_conv_encoder=[2] * 4, n_conv_decoder=[2] * 3, arch="unet")
    plans.write_text(json.dumps(d, indent=2))


def run_nnunet(work: Path, run: int) -> dict:
    venv = HERE / ".venv-nnunet" / "bin"
    env = dict(os.environ, nnUNet_raw=str((work / "raw").resolve()),
               nnUNet_preprocessed=str((work / "nnunet" / "preprocessed").resolve()),
               nnUNet_results=str((work / "nnunet" / f"results_run{run}").resolve()),
               nnUNet_n_proc_DA="2", nnUNet_compile="f")
    log = work / "logs" / f"nnunet_run{run}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    plans = Path(env["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans.json"
    done = plans.with_name(".bench_preprocessed")  # not inside nnU-Net's folder: it reads every file there
    if not done.is_file():
        _run([venv / "nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", "2",
              "--verify_dataset_integrity"], log, env)
        _set_nnunet_plan(plans)
        shutil.rmtree(plans.parent / "nnUNetPlans_3d_fullres", ignore_errors=True)
        _run([venv / "nnUNetv2_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", "2"], log, env)
        done.touch()
    shutil.rmtree(env["nnUNet_results"], ignore_errors=True)
    train_s = _run([venv / "python", HERE / "nnunet_1epoch.py", DATASET_ID, "3d_fullres", "all"], log, env)
    pred = work / "pred" / f"nnunet_run{run}"
    shutil.rmtree(pred, ignore_errors=True)
    pred_s = _run([venv / "nnUNetv2_predict", "-i", work / "raw" / DATASET / "imagesTs", "-o", pred, "-d", DATASET_ID,
                   "-c", "3d_fullres", "-f", "all", "-tr", "nnUNetTrainer", "--disable_tta", "-device", "cpu",
                   "-chk", "checkpoint_final.pth", "-npp", "1", "-nps", "1"], log, env)
    return {"tool": "nnunet", "run": run, "train_s": train_s, "predict_s": pred_s, "scores": _score(pred, work)}


def _set_nnunet_plan(plans: Path) -> None:
    d = json.loads(plans.read_text())
    cfg = d["configurations"]["3d_fullres"]
    cfg["patch_size"], cfg["batch_size"], cfg["spacing"] = PATCH, BATCH, [SPACING] * 3
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update(n_stages=4, features_per_stage=FEATURES, kernel_sizes=[[3, 3, 3]] * 4,
                strides=[[1, 1, 1]] + [[2, 2, 2]] * 3, n_conv_per_stage=[2] * 4, n_conv_per_stage_decoder=[2] * 3)
    plans.write_text(json.dumps(d, indent=2))


def save_result(work: Path, name: str, result: dict) -> None:
    """Write one run's result as ``W/results/NAME.json`` (what ``table`` reads) and print it."""
    out = work / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


def table(work: Path) -> str:
    import statistics
    # recipes_table.py writes its runs (recipe_*.json) to the same folder; they are its table's rows, not this one's
    rows = [json.loads(p.read_text()) for p in sorted((work / "results").glob("*.json")) if not p.name.startswith("recipe_")]
    lines = ["| tool | run | WT Dice | TC Dice | ET Dice | WT HD95 | TC HD95 | ET HD95 | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s = r["scores"]
        lines.append(f"| {r['tool']} | {r['run']} | " + " | ".join(f"{s[k]['dice']:.3f}" for k in REGIONS) + " | "
                     + " | ".join(f"{s[k]['hd95']:.1f}" for k in REGIONS) + f" | {r['train_s']:.0f} |")
    for tool in sorted({r["tool"] for r in rows}):
        rs = [r for r in rows if r["tool"] == tool]
        cells = []
        for metric in ("dice", "hd95"):
            for k in REGIONS:
                v = [r["scores"][k][metric] for r in rs]
                cells.append(f"{statistics.mean(v):.3f} ({min(v):.2f}-{max(v):.2f})" if metric == "dice"
                             else f"{statistics.mean(v):.1f} ({min(v):.0f}-{max(v):.0f})")
        lines.append(f"| **{tool} mean (range)** | {len(rs)} | " + " | ".join(cells) + " | "
                     + f"{statistics.mean(r['train_s'] for r in rs):.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("dataset", "autoseg", "nnunet", "table"))
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--run", type=int, default=0)
    p.add_argument("--dice", choices=("log", "linear"), default="log", help="autoseg's Dice term (autoseg-train --dice)")
    a = p.parse_args()
    if a.what == "dataset":
        make_dataset(a.work)
    elif a.what == "table":
        print(table(a.work))
    else:
        result = run_autoseg(a.work, a.run, a.dice) if a.what == "autoseg" else run_nnunet(a.work, a.run)
        save_result(a.work, f"{result['tool']}_run{a.run}", result)


if __name__ == "__main__":
    main()
