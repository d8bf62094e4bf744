"""Seconds per full-size BraTS case for autoseg-predict, with and without mirroring TTA, and peak RSS.

Network: the default nnU-Net BraTS topology (6 stages, 32..320 features, 3x3x3 convs, 128^3 patch,
31.2 M parameters), untrained (speed does not depend on the weights). Case: a real 240x240x155 case
from ../shared/data/brats. Each timed run is the whole path of one case: read the four NIfTI files,
preprocess, sliding window (half-patch overlap, Gaussian weights), restore to the original grid,
write the segmentation. Every (TTA, precision) setting runs in its own process so its peak RSS is
its own. The machine may be shared: the minimum and the median of ``--repeats`` runs are printed,
and the process CPU time (all threads), which contention inflates much less than wall time.

    python benchmarks/inference_speed.py                      # bf16 and fp32, without and with TTA
    python benchmarks/inference_speed.py --precision bf16 --tta off --repeats 3
    python benchmarks/inference_speed.py --accuracy           # bf16 vs fp32 probabilities on the case
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.brats import dataset_json_for
from autoseg.dataset import DatasetInfo
from autoseg.inference.predictor import (InputCase, Predictor, find_input_cases, read_input_case,
                                         segmentation_from_probabilities)
from autoseg.inference.sliding_window import compute_steps
from autoseg.io import write_image
from autoseg.network import build_network
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan
from autoseg.preprocessing import preprocess_case, restore_probabilities

DEFAULT_CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats" / "labelled" / "BraTS19_CBICA_ASK_1"
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def brats_plan() -> ConfigurationPlan:
    """nnU-Net's default 3d_fullres plan for BraTS (NNUNET facts, section 4)."""
    net = NetworkPlan("unet", [32, 64, 128, 256, 320, 320], [[3, 3, 3]] * 6, [[1, 1, 1]] + [[2, 2, 2]] * 5,
                      [2] * 6, [2] * 5)
    return ConfigurationPlan("3d_fullres", [1.0, 1.0, 1.0], [138, 169, 138], [128, 128, 128], 2, net,
                             [ChannelNormalization("zscore", True)] * 4, 0.0)


def make_predictor(precision: str, tta: bool, seed: int = 0, compile: bool = False) -> Predictor:
    info = DatasetInfo.from_dict(dataset_json_for("brats2020", 1, "bench"))
    plan = brats_plan()
    torch.manual_seed(seed)
    net = build_network(plan.network, 4, info.num_outputs, deep_supervision=False).eval()
    return Predictor(plan, info, [net], mirroring=tta, compute_dtype=DTYPES[precision], compile=compile)


def run_case(predictor: Predictor, case: InputCase, out_dir: Path) -> dict[str, float]:
    """One case end to end; seconds per step."""
    cpu0 = time.process_time()
    t = {"start": time.perf_counter()}
    images, geometry = read_input_case(case)
    t["read"] = time.perf_counter()
    data, _, props = preprocess_case(images, geometry, predictor.config, predictor.info)
    t["preprocess"] = time.perf_counter()
    probs = predictor.probabilities_preprocessed(torch.from_numpy(data))
    t["network"] = time.perf_counter()
    probs = restore_probabilities(probs, props)
    seg = segmentation_from_probabilities(probs, predictor.info, case.convention)
    write_image(out_dir / f"{case.case_id}.nii.gz", seg, geometry)
    t["export"] = time.perf_counter()
    keys = list(t)
    steps = {k: t[k] - t[p] for p, k in zip(keys, keys[1:])}
    steps["total"] = t["export"] - t["start"]
    steps["cpu"] = time.process_time() - cpu0
    steps["tiles"] = math.prod(len(compute_steps(n, p, predictor.step))
                               for n, p in zip(data.shape[1:], predictor.config.patch_size))
    steps["preprocessed_shape"] = list(data.shape[1:])  # type: ignore[assignment]
    return steps


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    case = find_input_cases(args.case, 4)[0]
    predictor = make_predictor(args.precision, args.tta == "on", compile=args.compile)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            runs.append(run_case(predictor, case, Path(tmp)))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(json.dumps({"runs": runs, "peak_rss_gb": peak_gb}))


def accuracy(args: argparse.Namespace) -> None:
    """bf16 vs fp32 probabilities and segmentation of the same untrained network on the real case."""
    torch.set_num_threads(args.threads)
    case = find_input_cases(args.case, 4)[0]
    images, geometry = read_input_case(case)
    out = {}
    for precision in ("fp32", "bf16"):
        p = make_predictor(precision, tta=False)
        data, _, _ = preprocess_case(images, geometry, p.config, p.info)
        out[precision] = p.probabilities_preprocessed(torch.from_numpy(data))
    info = make_predictor("fp32", False).info
    diff = np.abs(out["fp32"] - out["bf16"])
    seg32, seg16 = info.label_from_outputs(out["fp32"]), info.label_from_outputs(out["bf16"])
    print(f"bf16 vs fp32 probabilities: max |diff| {diff.max():.4f}, mean {diff.mean():.5f}; "
          f"segmentation voxels that differ: {np.mean(seg32 != seg16) * 100:.3f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a BraTS case folder (or raw-layout folder)")
    ap.add_argument("--precision", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"])
    ap.add_argument("--tta", nargs="+", choices=["off", "on"], default=["off", "on"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the network (compile time is in run 1)")
    ap.add_argument("--accuracy", action="store_true", help="compare bf16 with fp32 instead of timing")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.case.is_dir():
        sys.exit(f"{args.case}: case folder not found; pass --case")
    if args.accuracy:
        return accuracy(args)
    if args.child:
        args.precision, args.tta = args.precision[0], args.tta[0]
        return child(args)
    print(f"case {args.case.name}, torch {torch.__version__}, {args.threads} threads, {args.repeats} run(s) each")
    for tta in args.tta:
        for precision in args.precision:
            cmd = [sys.executable, __file__, "--child", "--case", str(args.case), "--precision", precision,
                   "--tta", tta, "--repeats", str(args.repeats), "--threads", str(args.threads)]
            cmd += ["--compile"] if args.compile else []
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            totals = [r["total"] for r in res["runs"]]
            cpu = [r["cpu"] for r in res["runs"]]
            steps = ", ".join(f"{k} {statistics.median(r[k] for r in res['runs']):.1f}"
                              for k in ("read", "preprocess", "network", "export"))
            label = f"{precision}{' compiled' if args.compile else ''}"
            print(f"TTA {tta:>3} {label}: min {min(totals):.1f} s/case, median {statistics.median(totals):.1f} "
                  f"({steps}); CPU time min {min(cpu):.1f} s; peak RSS {res['peak_rss_gb']:.2f} GB; preprocessed "
                  f"{res['runs'][0]['preprocessed_shape']}, {res['runs'][0]['tiles']} tiles", flush=True)


if __name__ == "__main__":
    main()
