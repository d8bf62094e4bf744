"""The demo's accuracy per seed and region head, on one machine (docs/accuracy.md).

    python benchmarks/demo_accuracy.py --work W --seeds 0 1 2 --region-head sigmoid softmax [--precision fp32] [--dice log linear]

Makes the demo's synthetic dataset once under W (the demo's 12 training + 8 test cases and its plan), then
for every seed and region head trains fold 0 with the demo's fixed settings (12 x 25 iterations; 7 x 25 and
3 test cases before 2026-12), predicts and scores the test cases. Appends one JSON line per run to W/results.jsonl (per-epoch
pseudo-Dice, test Dice per region, training seconds) and prints a markdown table of all runs.
``--average-last K ...`` also scores the uniform average of the last K epochs' weights (docs/accuracy.md §2.1).
``--trace`` also records, per training step, each region's BCE and Dice at full resolution and the
whole-tumour logit on oedema-only voxels (the measurement that found the collapse's cause).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path


def _dataset(home: Path, head: str, n_test: int | None = None):
    """The demo's data, planned with the demo's settings and the given region head (``n_test``: held-out
    cases instead of the demo's 3; a separate home per count)."""
    from autoseg.demo import CONFIGURATION, DemoOptions, DemoSettings, convert, demo_paths, generate_data, plan, preprocess
    from autoseg.plans import Plans

    settings = DemoSettings.full() if n_test is None else replace(DemoSettings.full(), n_test=n_test)
    opts = DemoOptions(home=home, out=home / "demo", settings=settings, workers=2)
    paths = demo_paths(home)
    if not paths.config_dir(CONFIGURATION).is_dir():
        src, _ = generate_data(opts)
        convert(src, paths, 2)
        plan(paths, opts.settings, 2)
        preprocess(paths, 2)
    plans = Plans.load(paths.plans_json)
    configs = {k: replace(c, network=replace(c.network, region_head=head)) for k, c in plans.configurations.items()}
    replace(plans, configurations=configs).save(paths.plans_json)  # same data and split, other head
    return opts, paths


def _trace_steps(records: list) -> None:
    """Record per-step loss terms of the full-resolution output (training steps only)."""
    import torch
    import torch.nn.functional as F

    from autoseg.training import losses

    original = losses.DiceBCELoss.forward
    full_resolution: list = []  # the first output seen is the full-resolution one

    def forward(self, logits, target):
        if logits.requires_grad and not full_resolution:
            full_resolution.append(tuple(logits.shape[2:]))
        if logits.requires_grad and tuple(logits.shape[2:]) == full_resolution[0]:
            with torch.no_grad():
                lg, tg = logits.float(), target.float()
                bce = [float(F.binary_cross_entropy_with_logits(lg[:, r], tg[:, r])) for r in range(lg.shape[1])]
                dice = [float(losses.soft_dice_loss(torch.sigmoid(lg[:, r:r + 1]), tg[:, r:r + 1], False))
                        for r in range(lg.shape[1])]
                oedema = (tg[:, 0] > 0) & (tg[:, 1] == 0)
                wt_on_oedema = float(lg[:, 0][oedema].mean()) if oedema.any() else float("nan")
                records.append([bce, dice, wt_on_oedema])
        return original(self, logits, target)

    losses.DiceBCELoss.forward = forward


@contextmanager
def _keep_epoch_weights(snapshots: list) -> Iterator[None]:
    """Within the block, append a copy of the network's weights at the end of every epoch (when the trainer
    saves checkpoint_latest.pt) to ``snapshots``; the trainer's own save is put back afterwards."""
    from autoseg.training import trainer

    original = trainer.save_checkpoint

    def save(path, payload):
        original(path, payload)
        if Path(path).name == "checkpoint_latest.pt":
            snapshots.append({k: v.detach().clone() for k, v in payload["network_state"].items()})

    trainer.save_checkpoint = save
    try:
        yield
    finally:
        trainer.save_checkpoint = original


def _test_dice(paths, opts, out: Path) -> dict:
    """Predict the demo's test cases with fold 0 into ``out`` and score them: mean Dice per region."""
    from autoseg.demo import evaluate, mean_dice, predict

    summary, _ = evaluate(predict(paths, out), opts.out / "references", paths, out, 2)
    return mean_dice(summary)


def _score_averages(paths, opts, fold_dir: Path, snapshots: list, lasts: list[int], out: Path) -> dict:
    """Test Dice of the uniform average of the last K epochs' weights, for each K (stochastic weight averaging;
    instance norm has no running statistics to recompute), predicted into ``out``_avgK; checkpoint_final.pt is
    restored afterwards."""
    from autoseg.checkpoint import load_checkpoint, save_checkpoint

    final = fold_dir / "checkpoint_final.pt"
    original = final.read_bytes()
    ckpt, scores = load_checkpoint(final), {}
    try:
        for k in lasts:
            states = snapshots[-k:]
            ckpt["network_state"] = {n: (sum(st[n].double() for st in states) / len(states)).to(v.dtype)
                                     if v.is_floating_point() else v for n, v in states[-1].items()}
            save_checkpoint(final, ckpt)
            scores[k] = _test_dice(paths, opts, out.with_name(f"{out.name}_avg{k}"))
    finally:
        final.write_bytes(original)
    return scores


def run(work: Path, seed: int, head: str, precision: str, epochs: int | None, trace: bool, dice: str = "log",
        n_test: int | None = None, average_last: list[int] | None = None) -> dict:
    from autoseg.checkpoint import load_checkpoint
    from autoseg.demo import CONFIGURATION, FOLD
    from autoseg.training import TrainOptions, train_fold

    home = work / ("demo_home" if n_test is None else f"demo_home_test{n_test}")
    opts, paths = _dataset(home, head, n_test)
    s = opts.settings
    fold_dir = paths.fold_dir(CONFIGURATION, FOLD)
    shutil.rmtree(fold_dir, ignore_errors=True)
    records: list = []
    if trace:
        _trace_steps(records)
    snapshots: list = []
    t0 = time.perf_counter()
    with _keep_epoch_weights(snapshots) if average_last else nullcontext():
        train_fold(paths, CONFIGURATION, FOLD, TrainOptions(
            epochs=epochs or s.epochs, iters_per_epoch=s.iters_per_epoch, val_iters=s.val_iters, device="cpu",
            workers=2, seed=seed, precision=precision, progress=False, dice=dice))
    train_s = time.perf_counter() - t0
    log = load_checkpoint(fold_dir / "checkpoint_final.pt")["log"]
    epochs = epochs or s.epochs
    out = work / f"out_seed{seed}_{head}_{precision}_{dice}_e{epochs}_t{s.n_test}_{os.environ.get('ATEN_CPU_CAPABILITY', 'default')}"
    result = {"seed": seed, "region_head": head, "dice": dice, "precision": precision, "train_s": train_s,
              "epochs": epochs, "n_test": s.n_test, "cpu_isa": os.environ.get("ATEN_CPU_CAPABILITY", "default"),
              "test_dice": _test_dice(paths, opts, out), "pseudo_dice": log["pseudo_dice"],
              "trace": records if trace else None}
    if average_last:
        result["test_dice_average_last"] = _score_averages(paths, opts, fold_dir, snapshots, average_last, out)
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def table(work: Path) -> str:
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    lines = ["| head | Dice term | precision | kernels | epochs | test cases | seed | pseudo-Dice WT/TC/ET per epoch "
             "| test WT | test TC | test ET |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        curve = " · ".join("/".join(f"{d:.2f}" for d in e) for e in r["pseudo_dice"])
        d = list(r["test_dice"].values())
        lines.append(f"| {r['region_head']} | {r.get('dice', 'linear')} | {r['precision']} | {r.get('cpu_isa', 'default')} | "
                     f"{r.get('epochs', 7)} | {r.get('n_test', 3)} | {r['seed']} | {curve} | "
                     + " | ".join(f"{v:.3f}" for v in d) + " |")
        for k, avg in r.get("test_dice_average_last", {}).items():
            lines.append(f"| ... average of the last {k} epochs' weights | | | | | | | | "
                         + " | ".join(f"{v:.3f}" for v in avg.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--region-head", nargs="+", default=["sigmoid", "softmax"], choices=("sigmoid", "softmax"))
    p.add_argument("--precision", default="fp32")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None, help="held-out cases (default: the demo's, 8)")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--average-last", type=int, nargs="+", default=None, metavar="K",
                   help="also score the uniform average of the last K epochs' weights, for each K")
    p.add_argument("--dice", nargs="+", default=["log"], choices=("log", "linear"),
                   help="the regions' Dice term(s) to train with (autoseg-train --dice; the label patterns keep "
                        "the recipe's loss.patterns_dice, log)")
    a = p.parse_args()
    if not a.table_only:
        for dice in a.dice:
            for head in a.region_head:
                for seed in a.seeds:
                    run(a.work, seed, head, a.precision, a.epochs, a.trace, dice, a.n_test, a.average_last)
    print(table(a.work))


if __name__ == "__main__":
    main()
