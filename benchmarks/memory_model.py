"""Calibration table of the memory model and the planner's timing (prints Markdown for docs/planning-memory.md).

    python benchmarks/memory_model.py [--quick]

For each network: the estimate (activations saved for backward, total) against what one real training
step holds on CPU (autograd's saved tensors; the peak of live tensors during forward, loss, backward
and the SGD step, plus parameters, momentum and the batch), in fp32 and in mixed precision (CPU
autocast to bfloat16).
"""

from __future__ import annotations

import argparse
import time

from autoseg.fingerprint import Fingerprint
from autoseg.network.memory import count_parameters, estimate_training_memory
from autoseg.planning.reference import plans_dir, reference_plans
from memory_calibrate import measure_training_step  # benchmarks/ is sys.path[0] when run as a script
from autoseg.plans import NetworkPlan


def _net(arch: str, features: list[int], dim: int, strides: list[list[int]], enc: list[int], dec: int,
         kernels: list[list[int]] | None = None) -> NetworkPlan:
    n = len(features)
    return NetworkPlan(arch, features, kernels or [[3] * dim] * n, strides, enc, [dec] * (n - 1))


ISO3 = [[1, 1, 1]] + [[2, 2, 2]] * 5
CASES = [  # name, plan, patch, batch, in the test (tests/test_memory_model.py)?
    ("unet3d 8-32, 16^3", _net("unet", [8, 16, 32], 3, ISO3[:3], [2] * 3, 2), [16, 16, 16], 2, True),
    ("unet3d aniso 8-32, 8x16x24", _net("unet", [8, 16, 32], 3, [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [2] * 3, 2,
                                         [[1, 3, 3], [3, 3, 3], [3, 3, 3]]), [8, 16, 24], 2, True),
    ("resenc3d 4-16, 16^3", _net("resenc_unet", [4, 8, 16], 3, ISO3[:3], [1, 3, 4], 1), [16, 16, 16], 2, True),
    ("unet2d 8-32, 32^2", _net("unet", [8, 16, 32], 2, [[1, 1], [2, 2], [2, 2]], [2] * 3, 2), [32, 32], 4, True),
    ("unet3d 32-256 (demo-size plan), 40x56x56", _net("unet", [32, 64, 128, 256], 3, ISO3[:4], [2] * 4, 2),
     [40, 56, 56], 2, False),
    ("resenc3d 32-256, 48^3", _net("resenc_unet", [32, 64, 128, 256], 3, ISO3[:4], [1, 3, 4, 6], 1),
     [48, 48, 48], 2, False),
    ("unet2d 32-512, 128^2", _net("unet", [32, 64, 128, 256, 512, 512], 2, [[1, 1]] + [[2, 2]] * 5, [2] * 6, 2),
     [128, 128], 12, False),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="only the small networks the test uses")
    args = p.parse_args()
    print("| network | batch | precision | params | saved (MB) | estimated act. (MB) | ratio | peak (MB) "
          "| estimated total (MB) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, plan, patch, batch, in_test in CASES:
        if args.quick and not in_test:
            continue
        for mixed in (False, True):
            m = measure_training_step(plan, patch, batch, 4, 3, mixed)
            e = estimate_training_memory(plan, patch, batch, 4, 3, mixed)
            print(f"| {name}{' (test)' if in_test else ''} | {batch} | {'bf16 autocast' if mixed else 'fp32'} "
                  f"| {count_parameters(plan, 4, 3):,} | {m.saved_activation_bytes / 1e6:.2f} "
                  f"| {e.activations / 1e6:.2f} | {e.activations / m.saved_activation_bytes:.3f} "
                  f"| {m.peak_bytes / 1e6:.2f} | {e.total / 1e6:.2f} | {e.total / m.peak_bytes:.3f} |", flush=True)
    fp = Fingerprint.load(plans_dir() / "reference" / "brats_fingerprint.json")
    t = time.perf_counter()
    plans = reference_plans()
    dt = time.perf_counter() - t
    print(f"\nPlanning the {fp.num_training}-case BraTS fingerprint for {len(plans)} VRAM classes took {dt:.2f} s "
          f"({dt / len(plans) * 1000:.0f} ms per plan).")


if __name__ == "__main__":
    main()
