"""autoseg-preprocess: crop, normalise and resample the training cases for the planned configurations."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from autoseg.cli._common import add_dataset, dataset_paths, parser, shard_arg, workers_arg
from autoseg.errors import run_cli
from autoseg.plans import Plans
from autoseg.preprocessing import preprocess_dataset


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-preprocess", "Reorient, crop to the nonzero box, normalise and resample every training "
               "case as plans.json says; reruns skip finished cases.")
    add_dataset(p)
    p.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                   help="configurations to preprocess (2d, 3d_fullres, 3d_lowres; 3d_cascade_fullres reads 3d_fullres's) or 'all' for every planned one "
                        "(default: 3d_fullres; 2d for a dataset of 2D images)")
    p.add_argument("-np", "--workers", type=workers_arg(), default=2, help="worker processes (one case each at a time)")
    p.add_argument("--shard", type=shard_arg, default=(0, 1),
                   help="i/n: only every n-th case starting at i (0-based), for job arrays")
    args = p.parse_args(argv)
    paths = dataset_paths(args)
    plans = Plans.load(paths.plans_json)
    configs = args.configurations or [plans.default_configuration]
    if "all" in configs:   # a cascade reads another configuration's cases (3d_fullres), preprocessed with it
        configs = [name for name, c in plans.configurations.items() if c.data_of is None]
    for name in configs:
        done = preprocess_dataset(paths, name, workers=args.workers, shard=args.shard)
        folder = plans.configuration(name, paths.plans_json).data_of or name
        print(f"{name}: {len(done)} case(s) preprocessed -> {paths.config_dir(folder)}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-preprocess", _main, argv)
