"""Side-by-side benchmark: autoseg against nnU-Net v2 2.8.1 on the same full-size BraTS cases.

    python benchmarks/run.py --against nnunet [--repeats 3] [--stages a,b] [--quick] [--note TEXT]
    python benchmarks/run.py --against nnunet --dry-run   # tiny synthetic data and plan, train_loop stages, seconds

Every measurement runs in a fresh subprocess per tool (benchmarks/stages/{autoseg,nnunet}_stages.py),
one at a time, with the same thread settings. A runner prints its own timing of the work (imports and
interpreter start-up excluded); this script adds the subprocess's peak RSS. Medians over the repeats go
into docs/performance.md between the markers; all raw results go to benchmarks/work/results-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "stages"))
import _common  # noqa: E402

REPO = HERE.parent
WORK = HERE / "work"
NNUNET_PY = Path(os.environ.get("NNUNET_PYTHON", HERE / ".venv-nnunet" / "bin" / "python"))
BRATS = Path(os.environ.get("AUTOSEG_BRATS_DIR", "/work/shared/data/brats/labelled"))
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- BEGIN benchmarks/run.py -->", "<!-- END benchmarks/run.py -->"
THREADS = "2"
ENV = {"OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS, "nnUNet_n_proc_DA": THREADS,
       "nnUNet_def_n_proc": THREADS, "AUTOSEG_WORKERS": THREADS, "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Stage:
    name: str
    label: str
    metric: str          # key in the runner's result
    unit: str
    higher_is_better: bool
    target: float        # required speed-up over nnU-Net (1 = at least as fast)
    args: tuple[str, ...] = ()


STAGES = [
    Stage("fingerprint_plan", "fingerprint + plan (4 cases)", "seconds", "s", False, 5.0),
    Stage("preprocess", "preprocessing, per full-size case (4 cases, 2 workers)", "seconds", "s/case", False, 1.0),
    Stage("dataloader", "data loading + augmentation, 2x4x128^3 batches", "batches_per_s", "batches/s", True, 2.0),
    Stage("train_step", "one training step (fwd+bwd+SGD), 2x4x128^3, 31 M params, each tool's default precision",
          "seconds", "s/step", False, 1.0),
    Stage("train_step_fp32", "the same step, fp32 in both (like for like)", "seconds", "s/step", False, 1.0),
    Stage("inference", "sliding-window inference, 1 full-size case, no TTA", "seconds", "s/case", False, 2.0),
    Stage("inference_tta", "sliding-window inference, 1 full-size case, 8-fold mirror TTA", "seconds", "s/case",
          False, 2.0),
    # end-to-end: two epochs of --iters iterations of each tool's own loop (loader + augmentation + step + logging)
    Stage("train_loop", "end-to-end training (own loader, augmentation, step, logging), default plan 2x4x128^3, "
          "each tool's default precision", "iters_per_s", "it/s", True, 1.0, ("--plan", "default", "--iters", "3")),
    Stage("train_loop_fp32", "the same loop, fp32 in both", "iters_per_s", "it/s", True, 1.0,
          ("--plan", "default", "--iters", "3")),
    Stage("train_loop_coarse", "end-to-end training, coarse plan (3 mm, 2x4x48x64x48, 4 stages 32..256), each tool's "
          "default precision", "iters_per_s", "it/s", True, 1.0, ("--plan", "coarse", "--iters", "30")),
    Stage("train_loop_coarse_fp32", "the same coarse loop, fp32 in both", "iters_per_s", "it/s", True, 1.0,
          ("--plan", "coarse", "--iters", "30")),
]
DRY_RUN_ARGS = ["--plan", "tiny", "--iters", "2"]  # after a stage's own arguments: the last --plan wins
TOOLS = ("autoseg", "nnunet")


# ---------------------------------------------------------------------------------------------- setup

def prepare_data(work: Path, dry_run: bool = False) -> None:
    """The raw dataset both tools read: autoseg's conversion of the labelled BraTS cases (byte copies), or
    for a dry run three tiny synthetic cases."""
    if dry_run:
        from autoseg.synthetic import write_raw_dataset

        raw = work / "autoseg" / "raw" / _common.DATASET_NAME
        if not (raw / "dataset.json").is_file():
            write_raw_dataset(raw, n_train=3, shape=(24, 28, 24), seed=0, name="BraTSBench")
        return
    from autoseg.convert import convert_brats

    if not BRATS.is_dir():
        sys.exit(f"{BRATS}: BraTS cases not found (set AUTOSEG_BRATS_DIR)")
    convert_brats(BRATS, work / "autoseg", 900, "BraTSBench", workers=1)


def ensure_nnunet() -> None:
    subprocess.run(["bash", str(HERE / "setup_nnunet.sh")], check=True)


# ---------------------------------------------------------------------------------------------- measuring

def run_one(tool: str, stage: Stage, extra: list[str], work: Path = WORK) -> dict:
    """One fresh subprocess: its result line, wall time, peak RSS of its largest process (wait4)
    and the sampled peak of the summed RSS of its process tree."""
    py = sys.executable if tool == "autoseg" else str(NNUNET_PY)
    if not Path(py).is_file():
        return {"tool": tool, "stage": stage.name, "missing": f"{tool}: no {py} (bash benchmarks/setup_nnunet.sh)",
                "peak_rss_gb": None, "peak_tree_rss_gb": None, "load_before": os.getloadavg()[0]}
    cmd = [py, str(HERE / "stages" / f"{tool}_stages.py"), stage.name, "--work", str(work), *stage.args, *extra]
    env = {**os.environ, **ENV}
    log = work / "logs" / f"{tool}_{stage.name}_{time.strftime('%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        peak_tree = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                peak_tree[0] = max(peak_tree[0], _common.tree_rss_bytes(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    wall = time.perf_counter() - t0
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("BENCH_RESULT ")]
    result = json.loads(lines[-1][len("BENCH_RESULT "):]) if lines else {}
    if proc.returncode != 0 or not lines:
        tail = " | ".join(text.strip().splitlines()[-3:])
        result = {"error": f"exit {proc.returncode}: {tail[-300:]}"}
    result.update(tool=tool, stage=stage.name, wall_s=wall, peak_rss_gb=usage.ru_maxrss / 2**20,
                  peak_tree_rss_gb=peak_tree[0] / 2**30, load_before=load_before, log=str(log))
    return result


# about a minute (train step), 7 minutes (nnU-Net TTA) or 3 minutes (default-plan training loop) per run
SLOW = ("train_step", "train_step_fp32", "inference_tta", "train_loop", "train_loop_fp32")


def measure(stages: list[Stage], repeats: int, slow_repeats: int, quick: bool, after_stage, work: Path = WORK,
            dry_run: bool = False) -> list[dict]:
    """Run the stages; ``after_stage(results)`` is called after each, so a cut-short run still reports."""
    results: list[dict] = []
    for stage in stages:
        n = slow_repeats if stage.name in SLOW else repeats
        extra = ["--batches", "8", "--warmup", "4"] if quick and stage.name == "dataloader" else []
        extra += DRY_RUN_ARGS if dry_run else []
        failed: set[str] = set()  # a tool whose stage is missing or broken is not retried
        for r in range(n):
            # alternate which tool goes first, so a slow spell of the shared machine hits both
            for tool in (TOOLS if r % 2 == 0 else TOOLS[::-1]):
                if tool in failed:
                    continue
                res = run_one(tool, stage, extra, work)
                results.append(res)
                problem = res.get("error") or res.get("missing")
                if problem:
                    failed.add(tool)
                shown = problem or f"{res[stage.metric]:.3g} {stage.unit}"
                print(f"[{stage.name} {r + 1}/{n}] {tool}: {shown}, peak RSS {_fmt(res['peak_rss_gb'], ' GB')}",
                      flush=True)
        after_stage(results)
    return results


# ---------------------------------------------------------------------------------------------- table

def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
    import torch

    return {"cpu": model, "cores": os.cpu_count(), "ram_gb": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_features": _common.describe_cpu_features(_common.cpu_features())}


def _median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None and "error" not in r and "missing" not in r]
    return statistics.median(vals) if vals else None


def _fmt(x: float | None, unit: str = "", digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}{unit}"


def table(stages: list[Stage], results: list[dict]) -> list[str]:
    head = ("| stage | autoseg | nnU-Net v2 | speed-up | target | met | peak RSS autoseg | peak RSS nnU-Net "
            "| memory ratio | met | runs |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in stages:
        rows = {t: [r for r in results if r["stage"] == s.name and r["tool"] == t] for t in TOOLS}
        problem = next((r.get("missing") or r.get("error") for t in TOOLS for r in rows[t]
                        if "missing" in r or "error" in r), None)
        a, b = (_median(rows[t], s.metric) for t in TOOLS)
        ra, rb = (_median(rows[t], "peak_rss_gb") for t in TOOLS)
        speed = None if a is None or b is None else (a / b if s.higher_is_better else b / a)
        mem = None if ra is None or rb is None else rb / ra
        met = "-" if speed is None else ("met" if speed >= s.target else "**not met**")
        mem_met = "-" if mem is None else ("met" if mem > 1 else "**not met**")
        runs = "/".join(str(sum(1 for r in rows[t] if s.metric in r)) for t in TOOLS)
        note = f" ({problem})" if problem and (a is None or b is None) else ""
        lines.append(f"| {s.label}{note} | {_fmt(a, ' ' + s.unit)} | {_fmt(b, ' ' + s.unit)} | {_fmt(speed, 'x')} | "
                     f">= {s.target:g}x | {met} | {_fmt(ra, ' GB')} | {_fmt(rb, ' GB')} | {_fmt(mem, 'x')} | {mem_met} "
                     f"| {runs} |")
    return lines


def report(stages: list[Stage], results: list[dict], args: argparse.Namespace, started: datetime) -> str:
    def by(stage: Stage, tool: str) -> list[dict]:
        return [r for r in results if r["stage"] == stage.name and r["tool"] == tool]

    m = machine()
    loads = [r["load_before"] for r in results]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    cmd = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    out = [
        f"Generated by `{cmd}` on {started:%Y-%m-%d %H:%M} UTC (commit {commit}).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, CPU only; CPU features: "
        f"{m['cpu_features']}; Python {m['python']}, torch {m['torch']} (both tools). Threads: OMP_NUM_THREADS={THREADS}, torch threads {THREADS}, "
        f"nnUNet_n_proc_DA={THREADS}, nnUNet_def_n_proc={THREADS}.",
        f"1-minute load average before each measurement: median {_fmt(statistics.median(loads), digits=2)}, "
        f"max {_fmt(max(loads), digits=2)} (above {m['cores']} means other work shared the cores)."
        + (f" Note: {args.note}" if args.note else ""),
        "",
        "Medians over the runs (autoseg/nnU-Net runs per cell in the last column). Speed-up = nnU-Net time / "
        "autoseg time (or autoseg rate / nnU-Net rate); memory ratio = nnU-Net peak RSS / autoseg peak RSS "
        "(largest single process of the measurement, from wait4). All numbers measured, none extrapolated.",
        "",
        *table(stages, results),
        "",
        "GPU rows: section \"GPU\" below (`bash benchmarks/gpu.sh` on a GPU machine).",
        "",
        "Peak summed RSS of each measurement's process tree (sampled every 0.25 s; shared pages count once per "
        "process, so an upper bound), what each planner chose for 3d_fullres on this dataset, and the inference "
        "precision (autoseg's default `auto`; nnU-Net autocasts on CUDA only):",
        "",
        "| stage | autoseg | nnU-Net v2 |",
        "|---|---|---|",
        *(f"| {s.name} | {_fmt(_median(by(s, 'autoseg'), 'peak_tree_rss_gb'), ' GB')} "
          f"| {_fmt(_median(by(s, 'nnunet'), 'peak_tree_rss_gb'), ' GB')} |" for s in stages),
        *(f"| plan | {next((r['plan'] for r in by(s, 'autoseg') if 'plan' in r), '-')} "
          f"| {next((r['plan'] for r in by(s, 'nnunet') if 'plan' in r), '-')} |"
          for s in stages if s.name == "fingerprint_plan"),
        *(f"| {s.name} precision | {next((r['precision'] for r in by(s, 'autoseg') if 'precision' in r), '-')} "
          f"| {next((r['precision'] for r in by(s, 'nnunet') if 'precision' in r), '-')} |"
          for s in stages if s.name.startswith(("inference", "train_step", "train_loop"))),
        *(f"| {s.name} CPU use (process CPU time / wall, workers included) "
          f"| {_fmt(_median(by(s, 'autoseg'), 'cpu_use'), digits=2)} "
          f"| {_fmt(_median(by(s, 'nnunet'), 'cpu_use'), digits=2)} |" for s in stages if s.name.startswith("train_loop")),
    ]
    return "\n".join(out)


def write_doc(text: str) -> None:
    doc = DOC.read_text() if DOC.is_file() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc or END not in doc:
        doc = doc.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", choices=["nnunet"], required=True)
    p.add_argument("--repeats", type=int, default=3, help="runs per tool and stage (default 3)")
    p.add_argument("--slow-repeats", type=int, default=1,
                   help="runs of the slow stages, train_step and inference_tta (nnU-Net: ~2 and ~7 min each)")
    p.add_argument("--stages", default=",".join(s.name for s in STAGES),
                   help="comma-separated subset of: " + ", ".join(s.name for s in STAGES))
    p.add_argument("--quick", action="store_true",
                   help="1 run per stage, fewer batches, no TTA inference unless named in --stages")
    p.add_argument("--note", default="", help="free text for the table header, e.g. 'shared machine'")
    p.add_argument("--keep", type=Path, default=None,
                   help="an earlier results-*.json whose stages not run now go into the table too "
                        "(re-read at every save, so it may belong to an invocation still running)")
    p.add_argument("--no-doc", action="store_true", help="print the table, leave docs/performance.md alone")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny synthetic cases and plan, 2 iterations per epoch, 1 run, the train_loop stages unless "
                        "--stages says otherwise; nnU-Net only if its venv exists; implies --no-doc")
    p.add_argument("--work", type=Path, default=WORK,
                   help="data, logs and raw results (default benchmarks/work; a dry run's: benchmarks/work/dry-run)")
    args = p.parse_args()
    if args.dry_run:
        args.no_doc, args.repeats, args.slow_repeats = True, 1, 1
        args.work = args.work / "dry-run" if args.work == WORK else args.work   # never beside the real cases
        if "--stages" not in " ".join(sys.argv):
            args.stages = ",".join(s.name for s in STAGES if s.name.startswith("train_loop"))
    names = args.stages.split(",")
    unknown = set(names) - {s.name for s in STAGES}
    if unknown:
        p.error(f"unknown stages: {', '.join(sorted(unknown))}")
    if args.quick:
        args.repeats = 1
        if "--stages" not in " ".join(sys.argv):
            names = [n for n in names if n != "inference_tta"]
    stages = [s for s in STAGES if s.name in names]

    started = datetime.now(timezone.utc)
    prepare_data(args.work, args.dry_run)
    if not args.dry_run:
        ensure_nnunet()
    out = args.work / f"results-{started:%Y%m%dT%H%M%S}.json"

    def kept() -> list[dict]:
        """--keep's other stages, re-read at every save: an invocation still running on that file
        (another stage being measured) adds its later results instead of being dropped."""
        return [r for r in json.loads(args.keep.read_text())["results"] if r["stage"] not in names] if args.keep else []

    def save(results: list[dict]) -> None:
        results = kept() + results
        out.write_text(json.dumps({"argv": sys.argv, "started": started.isoformat(), "results": results}, indent=1))
        done = [s for s in STAGES if any(r["stage"] == s.name for r in results)]
        if not args.no_doc:
            write_doc(report(done, results, args, started))

    results = kept() + measure(stages, args.repeats, args.slow_repeats, args.quick, save, args.work, args.dry_run)
    print(report([s for s in STAGES if any(r["stage"] == s.name for r in results)], results, args, started))
    print(f"\nraw results {out}" + ("" if args.no_doc else f"; wrote {DOC.relative_to(REPO)}"))


if __name__ == "__main__":
    main()
