"""The stroke CT demo with and without 2.5D context slices, at the same budget (docs/2d-ct-dicom.md).

    python benchmarks/stroke_context.py --work W [--context 2] [--seeds 0 1 2] [--precision fp32]

Runs ``autoseg-demo --task stroke-ct`` (its full settings: the same synthetic patients, plan, window 40/80,
epochs x iterations, seed) once with ``--context-slices 0`` and once with ``--context-slices K`` for every
seed, each in its own data root under W, and prints a markdown table of the held-out patients' mean lesion
Dice (per seed and mean) and the wall time; W/stroke_context.json keeps every number. Only the context
differs between the two rows: the planner sizes both 2d networks for the same memory budget.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def run(work: Path, context: int, seed: int, precision: str, workers: int) -> dict[str, float]:
    """One demo run; its lesion Dice and wall seconds."""
    from dataclasses import replace

    from autoseg.demo_stroke import StrokeOptions, StrokeSettings, run_stroke_demo

    home = work / f"context{context}_seed{seed}"
    settings = replace(StrokeSettings.full(), context_slices=context)
    start = time.perf_counter()
    result = run_stroke_demo(StrokeOptions(home=home, out=home / "demo_stroke", settings=settings, workers=workers,
                                           seed=seed, precision=precision), say=lambda line: None)
    return {"lesion_dice": result.dice["lesion"], "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the runs' data roots and the results")
    p.add_argument("--context", type=int, default=2, help="context slices of the second row (default: 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--precision", default="fp32")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, float]]] = {}
    for context in (0, a.context):
        label = "one slice (--context-slices 0)" if context == 0 else f"2.5D (--context-slices {context})"
        rows[label] = [run(a.work, context, seed, a.precision, a.workers) for seed in a.seeds]
    record = {"machine": platform.processor() or platform.machine(), "precision": a.precision, "seeds": a.seeds,
              "rows": rows}
    (a.work / "stroke_context.json").write_text(json.dumps(record, indent=2))
    print("| 2d input | " + " | ".join(f"lesion Dice, seed {s}" for s in a.seeds) + " | mean | wall per run |")
    print("|---" * (len(a.seeds) + 3) + "|")
    for label, runs in rows.items():
        dice = [r["lesion_dice"] for r in runs]
        wall = sum(r["seconds"] for r in runs) / len(runs) / 60
        print(f"| {label} | " + " | ".join(f"{d:.3f}" for d in dice) + f" | {sum(dice) / len(dice):.3f} | "
              f"{wall:.1f} min |")


if __name__ == "__main__":
    main()
