"""autoseg-plan: verify and fingerprint a raw dataset, then plan it for a GPU memory budget."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from autoseg.cli._common import add_dataset, dataset_paths, number, parser, workers_arg
from autoseg.errors import run_cli
from autoseg.network import network_names
from autoseg.planning.stage import run_planning, summary_table
from autoseg.verify import verify_dataset


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-plan", "Check the raw dataset, measure its fingerprint and write plans.json: spacing, "
               "patch, batch and network per configuration, sized to the GPU memory.")
    add_dataset(p)
    p.add_argument("--vram", type=number(float, "--vram 8", above=0.0), default=None, metavar="GB",
                   help="GPU memory to plan for (default: the CUDA device's, else 8); small values (0.5) make CPU-sized plans")
    p.add_argument("--explain", action="store_true", help="print every planning decision in words")
    p.add_argument("--verify", action="store_true", help="only check the raw dataset and exit")
    p.add_argument("--arch", default=None, metavar="NAME",
                   help=f"the network ({', '.join(network_names())}, or one a package registers, docs/extending.md); "
                        "default: the VRAM preset's, unet below 24 GB, resenc_unet from 24 GB")
    p.add_argument("--base-features", type=number(int, "--base-features 32", low=1), default=32, metavar="N",
                   help="features of the first stage, doubled per stage (default: 32)")
    p.add_argument("--max-features", type=number(int, "--max-features 320", low=1), default=320, metavar="N",
                   help="cap on the features per stage; 2d gets 1.6x (default: 320)")
    p.add_argument("--spacing", type=number(float, "--spacing 2", above=0.0), nargs="+", default=None, metavar="MM",
                   help="override the target spacing: one value (isotropic) or three (z y x), e.g. --spacing 3 "
                        "for quick CPU training (default: from the data, as nnU-Net)")
    p.add_argument("--ct-window", type=number(float, "--ct-window 40 80"), nargs=2, default=None,
                   metavar=("CENTER", "WIDTH"), help="normalise the CT channel with this fixed window (e.g. 40 80 for "
                   "the brain, in the images' values): clip to CENTER +- WIDTH/2, then scale to [0, 1] (default: "
                   "nnU-Net's CT scheme, clip to the 0.5..99.5 percentiles and z-score)")
    p.add_argument("--context-slices", type=number(int, "--context-slices 2", low=0), default=0, metavar="K",
                   help="2.5D: the 2d configuration also sees K slices on each side of the one it segments, as extra "
                        "input channels (edges repeat the first/last slice); 0 = one slice (default)")
    p.add_argument("-np", "--workers", type=workers_arg(), default=2, metavar="W",
                   help="worker threads for checking and fingerprinting (default: 2)")
    args = p.parse_args(argv)
    paths = dataset_paths(args)
    if args.verify:
        verify_dataset(paths.raw, workers=args.workers)
        print(f"{paths.raw}: dataset OK")
        return 0
    plans = run_planning(paths, vram_gb=args.vram, arch=args.arch, base_features=args.base_features,
                         max_features=args.max_features, workers=args.workers, spacing=args.spacing,
                         ct_window=args.ct_window, context_slices=args.context_slices,
                         warn=lambda line: print(f"autoseg-plan: warning: {line}", file=sys.stderr))
    print(f"{paths.name}: planned for {plans.vram_gb:g} GB ({plans.vram_source})")
    print(summary_table(plans))
    if args.explain:
        print()
        print("\n".join(f"- {s}" for s in plans.explanation))
    print(f"wrote {paths.plans_json}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-plan", _main, argv)
