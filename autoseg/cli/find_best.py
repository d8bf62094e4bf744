"""autoseg-find-best: rank every trained configuration x recipe and every pair of them on the cross-validation in the
raw images' space, postprocess the best, and write the commands that predict with it."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from autoseg.cli._common import add_dataset, dataset_paths, parser
from autoseg.errors import run_cli
from autoseg.selection import INSTRUCTIONS, find_best, ranking_table


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-find-best", "Rank the trained configurations x recipes whose folds are all validated, and every "
               "pair of them (mean of their probabilities), by the mean cross-validation Dice over the labels or "
               "regions (HD95 reported); decide postprocessing on the best; write results/DATASET/"
               f"{INSTRUCTIONS}.json and .md with the predict / ensemble commands. Folders with missing folds are "
               "listed, not ranked.")
    add_dataset(p)
    args = p.parse_args(argv)
    paths = dataset_paths(args)
    selection = find_best(paths)
    for line in selection.incomplete:
        print(f"not ranked: {line}", file=sys.stderr)
    instructions = selection.instructions
    print(ranking_table(instructions))
    post = instructions["postprocessing"]
    steps = ", ".join(post["largest_component_of"]) or "nothing (no gain)"
    print(f"\nbest: {instructions['best']['model']}; postprocessing: keep the largest component of {steps} "
          f"(mean Dice {post['mean_dice_before']:.4f} -> {post['mean_dice_after']:.4f})")
    print("predict with (replace INPUT_FOLDER and OUTPUT_FOLDER):")
    print("\n".join(f"  {c}" for c in instructions["commands"]))
    print(f"-> {paths.results / (INSTRUCTIONS + '.json')}, .md", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-find-best", _main, argv)
