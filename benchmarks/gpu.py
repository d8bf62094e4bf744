"""The GPU benchmark in one run: autoseg, and nnU-Net v2 where its packages import, on one CUDA GPU.

    bash benchmarks/gpu.sh [--dry-run] [OUT]     # installs carried wheels (.whl/), then runs this
    python benchmarks/gpu.py OUT [--dry-run] [--budget 420] [--work DIR] [--nnunet-python PY]
    python benchmarks/gpu.py --write-doc OUT/gpu_results.json   # here: the table into docs/performance.md

For the default BraTS plan (2 x 4 x 128^3, plain U-Net, 6 stages 32..320, as the CPU rows of
docs/performance.md) it measures: training iterations per second of each tool's own loop with its own loader
(two epochs of --iters iterations on fold all, the second timed: autoseg with augmentation in the CPU workers
and, second row, batched on the GPU with ``--augment-on device``), the CPU use of that loop, inference seconds
for one full-size case (240 x 240 x 155, 4 channels, NIfTI to NIfTI) with and without 8-fold mirror TTA, and
each measurement's peak GPU memory (``torch.cuda.max_memory_allocated``, every measurement in a fresh
process). Each tool computes in its default precision on CUDA (fp16 autocast). Data: the labelled BraTS cases
of ../shared/data/brats when present, else two synthetic BraTS-like cases of that size.

Each measurement is a subprocess of benchmarks/stages/{autoseg,nnunet}_stages.py with a time limit inside
``--budget`` seconds (autoseg first); OUT/gpu_results.json and OUT/gpu_results.md are rewritten after each,
so a run cut short still reports. ``--dry-run``: tiny synthetic cases and plan on the CPU, every stage once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "stages"))
import _common as c  # noqa: E402

DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- BEGIN benchmarks/gpu.py -->", "<!-- END benchmarks/gpu.py -->"
BRATS = REPO.parent / "shared" / "data" / "brats" / "labelled"
FULL_SHAPE = (155, 240, 240)   # z, y, x: a BraTS case
DRY_SHAPE = (24, 28, 24)


@dataclass(frozen=True)
class Measurement:
    row: str                 # key of ROWS
    tool: str                # autoseg or nnunet
    stage: str               # the stage runner's stage
    args: tuple[str, ...]
    limit_s: int             # at most this long (full run; a dry run gets --budget)


ROWS = {
    "train_cpu": "training it/s, augmentation in {workers} CPU worker processes",
    "train_device": "training it/s, augmentation batched on the GPU (autoseg-train --augment-on device)",
    "inference": "inference s/case, full-size case, no TTA",
    "inference_tta": "inference s/case, full-size case, 8-fold mirror TTA",
}


def measurements(dry: bool, device: str, workers: int, iters: int) -> list[Measurement]:
    """Everything measured, most important first (the budget may cut the end)."""
    common = ("--plan", "tiny" if dry else "default", "--device", device)
    train = (*common, "--iters", str(iters), "--workers", str(workers))
    return [
        Measurement("train_cpu", "autoseg", "train_loop", (*train, "--augment-on", "cpu"), 150),
        Measurement("train_device", "autoseg", "train_loop", (*train, "--augment-on", "device"), 110),
        Measurement("train_cpu", "nnunet", "train_loop", train, 210),
        Measurement("inference", "autoseg", "inference", common, 80),
        Measurement("inference", "nnunet", "inference", common, 100),
        Measurement("inference_tta", "autoseg", "inference_tta", common, 80),
        Measurement("inference_tta", "nnunet", "inference_tta", common, 120),
    ]


# ---------------------------------------------------------------------------------------------- running

def prepare_data(work: Path, dry: bool) -> str:
    """The raw dataset both tools read (the stage runners' layout); says what it holds."""
    raw = work / "autoseg" / "raw" / c.DATASET_NAME
    if not dry and BRATS.is_dir():
        if not (raw / "dataset.json").is_file():
            from autoseg.convert import convert_brats

            convert_brats(BRATS, work / "autoseg", c.DATASET_ID, "BraTSBench", workers=4)
        return f"the labelled BraTS cases of {BRATS} ({len(c.case_ids(work))})"
    shape = DRY_SHAPE if dry else FULL_SHAPE
    if not (raw / "dataset.json").is_file():
        from autoseg.synthetic import write_raw_dataset

        write_raw_dataset(raw, n_train=2, shape=shape, seed=0, name="BraTSBench")
    return f"2 synthetic BraTS-like cases of {shape[2]} x {shape[1]} x {shape[0]} voxels, 4 channels"


def run_measurement(m: Measurement, python: str, work: Path, env: dict, timeout: float, logs: Path) -> dict:
    """One fresh process (its own session, so a timeout also ends its loader workers); its result line."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{m.tool}_{m.row}.log"
    cmd = [python, str(HERE / "stages" / f"{m.tool}_stages.py"), m.stage, "--work", str(work), *m.args]
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    text = log.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith(c.RESULT_TAG)]
    result = json.loads(lines[-1][len(c.RESULT_TAG):]) if lines and rc == 0 else {}
    if not result:
        tail = " | ".join(text.strip().splitlines()[-3:])[-400:]
        result = {"error": (f"timed out after {timeout:.0f} s" if rc is None else f"exit {rc}") + f": {tail}"}
    result.update(row=m.row, tool=m.tool, stage=m.stage, wall_s=round(time.perf_counter() - start, 1), log=str(log))
    return result


def importable(python: str, modules: str, env: dict) -> str | None:
    """None when ``python`` imports ``modules``, else why not (its last line of error)."""
    proc = subprocess.run([python, "-c", f"import {modules}"], env=env, capture_output=True, text=True, timeout=300)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def machine(device: str) -> dict:
    import torch

    info = {"cpu": c.cpu_features(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    info["commit"] = commit.stdout.strip() or "-"
    return info


# ---------------------------------------------------------------------------------------------- report

def _cell(results: list[dict], row: str, tool: str) -> str:
    r = next((r for r in results if r["row"] == row and r["tool"] == tool), None)
    if r is None:
        return "no such option" if (row, tool) == ("train_device", "nnunet") else "-"
    if "skipped" in r or "error" in r or "missing" in r:
        return "not measured: " + (r.get("skipped") or r.get("missing") or r["error"])[:200].replace("|", "/")
    gpu = f"GPU peak {r['gpu_peak_gb']:.3g} GB" if r.get("gpu_peak_gb") is not None else "no GPU"
    if row.startswith("train"):
        return f"**{r['iters_per_s']:.3g} it/s** ({r['cpu_use']:.2g} cores busy, {gpu})"
    return f"**{r['seconds']:.3g} s** ({gpu})"


def render(doc: dict) -> str:
    m, s, results = doc["machine"], doc["settings"], doc["results"]
    cpu = m["cpu"]
    where = (f"{m['gpu']} ({m['gpu_memory_gb']} GiB), CUDA {m['cuda']}" if m.get("gpu")
             else "no GPU: a dry run on the CPU")
    lines = [
        f"Generated by `bash benchmarks/gpu.sh{' --dry-run' if s['dry_run'] else ''}` on {doc['started'][:16]} UTC "
        f"(commit {m['commit']}): {where}; torch {m['torch']}, Python {m['python']}; CPU {cpu['model']}, "
        f"{m['cores']} cores ({c.describe_cpu_features(cpu)}). Data: {doc['data']}.",
        "",
        f"Plan: {s['plan']}. Training: each tool's own loop and loader on fold all, two epochs of {s['iters']} "
        f"iterations, the second timed; {s['workers']} loader processes per tool; each tool's default precision "
        f"on CUDA (fp16 autocast); nnU-Net {'with' if s['nnunet_compile'] else 'without'} torch.compile "
        f"(nnUNet_compile). Inference: NIfTI to NIfTI, step 0.5, Gaussian weights. GPU peak: "
        "torch.cuda.max_memory_allocated of the measurement's process; cores busy: process CPU time / wall, "
        "loader workers included.",
        "",
        "| measurement | autoseg | nnU-Net v2 |",
        "|---|---|---|",
    ]
    for row, label in ROWS.items():
        lines.append(f"| {label.format(workers=s['workers'])} | {_cell(results, row, 'autoseg')} "
                     f"| {_cell(results, row, 'nnunet')} |")
    return "\n".join(lines)


def write_doc(text: str) -> None:
    """Put the table between this script's markers in docs/performance.md (appended if they are missing)."""
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        doc = doc.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")


# ---------------------------------------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", help="folder for gpu_results.json and gpu_results.md")
    p.add_argument("--dry-run", action="store_true", help="tiny synthetic cases and plan, on the CPU, every stage once")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all measurements (default 420, the 8-minute run less set-up; dry run 1800)")
    p.add_argument("--work", type=Path, default=None, help="data and logs (default: a folder in the temp dir)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per epoch (default 40; dry run 2)")
    p.add_argument("--workers", type=int, default=None,
                   help="loader processes per tool (default: cores - 4, at most 12; dry run 1)")
    p.add_argument("--nnunet-python", default=os.environ.get("NNUNET_PYTHON", sys.executable),
                   help="the Python that has nnunetv2 (default: this one, or $NNUNET_PYTHON)")
    p.add_argument("--write-doc", type=Path, metavar="JSON",
                   help="render a gpu_results.json into docs/performance.md and stop")
    a = p.parse_args()
    if a.write_doc:
        write_doc(render(json.loads(a.write_doc.read_text())))
        print(f"wrote {DOC}")
        return
    if a.out is None:
        p.error("OUT is required (or --write-doc)")
    import torch

    device = "cuda" if torch.cuda.is_available() and not a.dry_run else "cpu"
    if device == "cpu" and not a.dry_run:
        sys.exit("gpu.py: no CUDA GPU visible; use --dry-run to exercise the stages on the CPU")
    started = datetime.now(timezone.utc)
    deadline = time.perf_counter() + (a.budget or (1800 if a.dry_run else 420))
    work = a.work or Path(tempfile.gettempdir()) / ("autoseg-gpu-dry" if a.dry_run else "autoseg-gpu")
    workers = a.workers or (1 if a.dry_run else max(1, min(12, (os.cpu_count() or 8) - 4)))
    threads = 2 if a.dry_run else 4
    iters = a.iters or (2 if a.dry_run else 40)
    compile_nnunet = os.environ.get("nnUNet_compile", "f").lower() in ("t", "true", "1")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "nnUNet_n_proc_DA": str(workers), "nnUNet_def_n_proc": str(threads), "PYTHONUNBUFFERED": "1",
           "nnUNet_compile": "t" if compile_nnunet else "f"}
    a.out.mkdir(parents=True, exist_ok=True)
    shape = c.PLANS["tiny" if a.dry_run else "default"]
    doc = {"argv": sys.argv, "started": started.isoformat(), "machine": machine(device),
           "data": prepare_data(work, a.dry_run),
           "settings": {"dry_run": a.dry_run, "iters": iters, "workers": workers, "threads": threads,
                        "nnunet_compile": compile_nnunet,
                        "plan": f"patch {'x'.join(map(str, shape.patch))}, batch {shape.batch}, {len(shape.features)} "
                                f"stages {shape.features[0]}..{shape.features[-1]} features"},
           "results": []}
    nnunet_missing = importable(a.nnunet_python, "nnunetv2.training.nnUNetTrainer.nnUNetTrainer", env)

    def save() -> None:
        (a.out / "gpu_results.json").write_text(json.dumps(doc, indent=1))
        (a.out / "gpu_results.md").write_text(render(doc) + "\n")

    for m in measurements(a.dry_run, device, workers, iters):
        left = deadline - time.perf_counter()
        if m.tool == "nnunet" and nnunet_missing:
            result = {"skipped": f"nnunetv2 not importable ({nnunet_missing}); carry its wheels: "
                                 "bash benchmarks/gpu_wheels.sh"}
        elif left < 30:
            result = {"skipped": "the run's time budget was spent"}
        else:
            timeout = left - 5 if a.dry_run else min(m.limit_s, left - 5)
            result = run_measurement(m, a.nnunet_python if m.tool == "nnunet" else sys.executable, work, env,
                                     timeout, work / "logs")
        result.setdefault("row", m.row)
        result.setdefault("tool", m.tool)
        doc["results"].append(result)
        shown = result.get("skipped") or result.get("error") or result.get("missing") or \
            (f"{result['iters_per_s']:.3g} it/s" if "iters_per_s" in result else f"{result['seconds']:.3g} s")
        print(f"[{m.tool} {m.row}] {shown}", flush=True)
        save()
    print(render(doc))


if __name__ == "__main__":
    main()
