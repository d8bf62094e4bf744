"""autoseg-convert: turn a public dataset release into a raw dataset (nnU-Net v2 layout)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from autoseg.cli._common import add_home, parser
from autoseg.convert import convert_brats
from autoseg.errors import run_cli
from autoseg.paths import data_root


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-convert", "Convert a public dataset release into raw/DatasetNNN_Name (nnU-Net v2 layout).")
    sub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    b = sub.add_parser("brats", help="BraTS 2019-2021 (CASE_t1.nii.gz ...) or 2023+ (CASE-t1n.nii.gz ...) folders",
                       description="Labelled cases go to imagesTr/labelsTr, unlabelled ones to imagesTs; labels keep "
                                   "their original values and dataset.json declares the three tumour regions.")
    b.add_argument("src", type=Path, help="folder holding the case folders (or one level of sub-folders of them)")
    b.add_argument("-d", "--dataset-id", type=int, required=True, help="dataset number, 0-999")
    b.add_argument("--name", default="BraTS", help="dataset name: raw/DatasetNNN_NAME (default: BraTS)")
    b.add_argument("-np", "--workers", type=int, default=2, help="files copied in parallel (default: 2)")
    add_home(b)
    args = p.parse_args(argv)
    paths = convert_brats(args.src, data_root(args.home), args.dataset_id, args.name, args.workers)
    n_tr = len(list((paths.raw / "labelsTr").glob("*.nii.gz"))) if (paths.raw / "labelsTr").is_dir() else 0
    n_ts = len(list((paths.raw / "imagesTs").glob("*_0000.nii.gz"))) if (paths.raw / "imagesTs").is_dir() else 0
    print(f"{paths.raw}: {n_tr} training case(s), {n_ts} test case(s); next: autoseg-plan -d {paths.dataset_id}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-convert", _main, argv)
