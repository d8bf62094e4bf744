"""Measure preprocessing on full-size BraTS cases and choose the on-disk format of preprocessed cases.

Part 1 (speed): preprocess the real labelled BraTS cases (symlinked into a temporary raw dataset,
nothing copied) with ``preprocess_dataset`` in a child process; report seconds per case and the
peak resident memory of the whole process tree (parent + workers, sampled from /proc every 20 ms)
and of its largest process (as GNU time reports it). CPU seconds per case (user + system of the whole
tree, start-up included) are less sensitive than wall time to other jobs on a shared machine.

Part 2 (format): store one preprocessed case as uncompressed .npy, compressed and uncompressed
.npz, and Blosc2 (nnU-Net's format; only when blosc2 happens to be installed, it is not a
dependency), then measure file size, write time and random patch reads per second, warm (page
cache) and cold (file pages evicted with posix_fadvise before every read).

    python benchmarks/preprocess_format.py [--brats DIR] [--workers 2] [--repeat 2] [--json out.json]

Timings are wall clock on whatever machine runs it; on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from autoseg import brats
from autoseg.io import write_json_atomic
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan, Plans

DEFAULT_BRATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats"
PATCHES = {"128^3": (128, 128, 128), "96^3": (96, 96, 96), "64^3": (64, 64, 64), "2d 1x192x160": (1, 192, 160)}


# ---- part 1: speed and memory -------------------------------------------------------------------------
def make_raw_dataset(brats_dir: Path, home: Path, repeat: int) -> Path:
    """raw/Dataset001_BraTS with symlinks to the labelled BraTS 2019/2020 cases, each ``repeat`` times."""
    raw = home / "raw" / "Dataset001_BraTS"
    folders = sorted(p for p in (brats_dir / "labelled").iterdir() if p.is_dir())
    n = 0
    for r in range(repeat):
        for folder in folders:
            case = brats.find_brats_case(folder)
            cid = f"{folder.name}_r{r}"
            for c, src in enumerate(case.channels):
                (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
                os.symlink(src, raw / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
            (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
            os.symlink(case.label, raw / "labelsTr" / f"{cid}.nii.gz")
            n += 1
    write_json_atomic(raw / "dataset.json", brats.dataset_json_for("brats2020", n, "BraTS"))
    net = NetworkPlan("unet", [32, 64], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [2, 2], [2])
    cfg = ConfigurationPlan("3d_fullres", [1.0, 1.0, 1.0], [140, 170, 140], [128, 128, 128], 2, net,
                            [ChannelNormalization("zscore", use_mask=True)] * 4, 7.5)
    Plans("Dataset001_BraTS", 8.0, "benchmark", "LPS", 4, 3, True, {"3d_fullres": cfg}).save(
        home / "preprocessed" / "Dataset001_BraTS" / "plans.json")
    return raw


def _tree_rss(pid: int) -> tuple[int, int]:
    """(sum, max) resident bytes over ``pid`` and its descendants."""
    total = biggest = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            continue
        total, biggest = total + rss, max(biggest, rss)
    return total, biggest


def run_preprocessing(home: Path, workers: int) -> dict:
    """Preprocess in a child process; wall time of the call, per case, and peak RSS of the tree."""
    code = ("import json, sys, time; from autoseg.paths import resolve_dataset; "
            "from autoseg.preprocessing import preprocess_dataset; p = resolve_dataset(sys.argv[1], None); "
            "t = time.perf_counter(); done = preprocess_dataset(p, '3d_fullres', workers=int(sys.argv[2])); "
            "print(json.dumps({'cases': len(done), 'seconds': time.perf_counter() - t}))")
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-c", code, str(home), str(workers)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    peak_sum = peak_max = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_sum, peak_max
        while not stop.is_set():
            s, m = _tree_rss(proc.pid)
            peak_sum, peak_max = max(peak_sum, s), max(peak_max, m)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"preprocessing failed (exit {proc.returncode})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res = json.loads(out.strip().splitlines()[-1])
    n = max(res["cases"], 1)
    return {"workers": workers, "cases": res["cases"], "call_s": round(res["seconds"], 2),
            "per_case_s": round(res["seconds"] / n, 2), "cpu_per_case_s": round(cpu / n, 2),
            "wall_with_startup_s": round(time.perf_counter() - t0, 2),
            "peak_rss_tree_gb": round(peak_sum / 2**30, 3), "peak_rss_largest_gb": round(peak_max / 2**30, 3)}


# ---- part 2: format ---------------------------------------------------------------------------------
def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _formats(folder: Path, data: np.ndarray, seg: np.ndarray) -> dict[str, dict]:
    """Writers and patch readers per format: name -> {write, read(slices) -> array, files}."""
    f = {
        "npy (mmap)": {
            "files": [folder / "d.npy", folder / "s.npy"],
            "write": lambda: (np.save(folder / "d.npy", data), np.save(folder / "s.npy", seg)),
            "read": lambda sl: (np.array(np.load(folder / "d.npy", mmap_mode="r")[sl]),
                                np.array(np.load(folder / "s.npy", mmap_mode="r")[sl[1:]])),
        },
        "npz compressed": {
            "files": [folder / "c.npz"],
            "write": lambda: np.savez_compressed(folder / "c.npz", data=data, seg=seg),
            "read": lambda sl: _npz_read(folder / "c.npz", sl),
        },
        "npz uncompressed": {
            "files": [folder / "u.npz"],
            "write": lambda: np.savez(folder / "u.npz", data=data, seg=seg),
            "read": lambda sl: _npz_read(folder / "u.npz", sl),
        },
    }
    try:
        import blosc2  # noqa: PLC0415 - optional, for comparison with nnU-Net only
    except ImportError:
        return f
    blosc2.set_nthreads(1)
    cp = {"codec": blosc2.Codec.LZ4HC, "clevel": 8}

    def write_b2() -> None:
        for name, arr, chunks, blocks in (("d", data, (1, 64, 64, 64), (1, 16, 32, 32)),
                                          ("s", seg, (64, 64, 64), (16, 32, 32))):
            p = folder / f"{name}.b2nd"
            p.unlink(missing_ok=True)
            blosc2.asarray(np.ascontiguousarray(arr), urlpath=str(p), chunks=tuple(min(c, s) for c, s in zip(chunks, arr.shape)),
                           blocks=tuple(min(b, s) for b, s in zip(blocks, arr.shape)), cparams=cp)

    f["blosc2 LZ4HC (nnU-Net)"] = {
        "files": [folder / "d.b2nd", folder / "s.b2nd"], "write": write_b2,
        "read": lambda sl: (blosc2.open(str(folder / "d.b2nd"), mode="r", mmap_mode="r")[sl],
                            blosc2.open(str(folder / "s.b2nd"), mode="r", mmap_mode="r")[sl[1:]]),
    }
    return f


def _npz_read(path: Path, sl: tuple) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["data"][sl], z["seg"][sl[1:]]


def _random_slices(shape: tuple[int, ...], patch: tuple[int, int, int], rng: np.random.Generator) -> tuple:
    starts = [int(rng.integers(0, max(s - p, 0) + 1)) for s, p in zip(shape[1:], patch)]
    return (slice(None),) + tuple(slice(a, a + min(p, s)) for a, p, s in zip(starts, patch, shape[1:]))


def measure_formats(data: np.ndarray, seg: np.ndarray, budget_s: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, fmt in _formats(folder, data, seg).items():
            t = time.perf_counter()
            fmt["write"]()
            write_s = time.perf_counter() - t
            row = {"format": name, "size_mb": round(sum(p.stat().st_size for p in fmt["files"]) / 1e6, 1),
                   "write_s": round(write_s, 2)}
            for cache in ("warm", "cold"):
                for label, patch in PATCHES.items():
                    rng = np.random.default_rng(0)
                    n, spent = 0, 0.0
                    while spent < budget_s or n < 3:
                        sl = _random_slices(data.shape, patch, rng)
                        if cache == "cold":
                            for p in fmt["files"]:
                                _evict(p)
                        t = time.perf_counter()
                        d, s = fmt["read"](sl)
                        spent += time.perf_counter() - t
                        n += 1
                        assert d.shape[1:] == s.shape
                    row[f"{cache} {label} /s"] = round(n / spent, 1)
            rows.append(row)
    return rows


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brats", type=Path, default=Path(os.environ.get("AUTOSEG_BRATS_DIR", DEFAULT_BRATS)))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2, help="process each labelled case this many times")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of reads per format and patch size")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    if not (args.brats / "labelled").is_dir():
        raise SystemExit(f"{args.brats}: BraTS cases not found; pass --brats DIR")
    results: dict = {"speed": [], "formats": []}
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            home = Path(tmp) / f"w{w}"
            make_raw_dataset(args.brats, home, args.repeat)
            results["speed"].append(run_preprocessing(home, w))
            print(results["speed"][-1], file=sys.stderr)
        from autoseg.preprocessing import list_preprocessed_cases, load_case  # noqa: PLC0415
        out = Path(tmp) / f"w{args.workers[-1]}" / "preprocessed" / "Dataset001_BraTS" / "3d_fullres"
        case = load_case(out, list_preprocessed_cases(out)[0], mmap=False)
        results["case_shape"] = list(case.data.shape)
        results["formats"] = measure_formats(case.data, case.seg, args.budget)
    print("## preprocessing speed and memory\n" + _table(results["speed"]))
    print(f"\n## on-disk format (one case, data {results['case_shape']} float32 + int8 seg)\n" + _table(results["formats"]))
    if args.json:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
