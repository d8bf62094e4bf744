"""autoseg-convert: a public dataset release, PNG/TIFF slices or DICOM series -> a raw dataset (nnU-Net v2 layout)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from autoseg.cli._common import add_home, number, parser, workers_arg
from autoseg.convert import convert_brats
from autoseg.dicom import convert_dicom
from autoseg.errors import run_cli
from autoseg.paths import data_root
from autoseg.slices import convert_slices


def _target(sp: argparse.ArgumentParser) -> None:
    """The options that say where the dataset goes, shared by the slices and dicom formats."""
    sp.add_argument("-d", "--dataset-id", type=number(int, "-d 1", low=0, high=999), required=True,
                    help="dataset number, 0-999")
    sp.add_argument("--name", required=True, help="dataset name: raw/DatasetNNN_NAME")
    sp.add_argument("-np", "--workers", type=workers_arg(), default=2, help="cases read in parallel (default: 2)")
    add_home(sp)


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-convert", "Convert BraTS folders, PNG/TIFF slices or DICOM series into raw/DatasetNNN_Name "
                                  "(nnU-Net v2 layout).")
    sub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    b = sub.add_parser("brats", help="BraTS 2019-2021 (CASE_t1.nii.gz ...) or 2023+ (CASE-t1n.nii.gz ...) folders",
                       description="Labelled cases go to imagesTr/labelsTr, unlabelled ones to imagesTs; labels keep "
                                   "their original values and dataset.json declares the three tumour regions.")
    b.add_argument("src", type=Path, help="folder holding the case folders (or one level of sub-folders of them)")
    b.add_argument("-d", "--dataset-id", type=number(int, "-d 1", low=0, high=999), required=True,
                   help="dataset number, 0-999")
    b.add_argument("--name", default="BraTS", help="dataset name: raw/DatasetNNN_NAME (default: BraTS)")
    b.add_argument("-np", "--workers", type=workers_arg(), default=2, help="files copied in parallel (default: 2)")
    add_home(b)
    s = sub.add_parser("slices", help="PNG/TIFF slices: SRC/images/PATIENT/001.png ... (+ SRC/masks/PATIENT/001.png), "
                       "or 2D images SRC/images/CASE.png", description="One volume per patient folder (slices in the "
                       "natural order of their names) or one single-slice volume per 2D image (RGB: three channels). "
                       "Mask grey values become labels 1..k in increasing order (0/255 -> 0/1), recorded in "
                       "dataset.json; a patient without masks goes to imagesTs. See docs/2d-ct-dicom.md.")
    s.add_argument("src", type=Path, help="folder holding the image folder (and the mask folder)")
    _target(s)
    s.add_argument("--spacing", nargs=3, type=number(float, "--spacing 5 0.5 0.5", above=0.0), default=(1.0, 1.0, 1.0),
                   metavar=("Z", "Y", "X"), help="voxel spacing in mm: slice distance, row and column pixel size "
                   "(default: 1 1 1; PNG and TIFF do not carry it)")
    s.add_argument("--images", default="images", help="name of the image folder inside SRC (default: images)")
    s.add_argument("--masks", default=None, help="name of the mask folder inside SRC (default: masks, if present)")
    s.add_argument("--channel-name", default="image", help="channel name in dataset.json; CT selects CT "
                   "normalisation (default: image; RGB images get R, G, B)")
    s.add_argument("--intercept", type=number(float, "--intercept -1024"), default=0.0, metavar="V",
                   help="added to every pixel value, e.g. -1024 for 16-bit PNGs that store HU + 1024 (default: 0); "
                        "recorded in dataset.json so autoseg-predict reads PNG input the same way")
    dc = sub.add_parser("dicom", help="DICOM series: SRC/CASE/*.dcm (one series per case), or a mapping file "
                        "{case: {channel: folder}}", description="Slices are ordered by position, values rescaled "
                        "to HU, and each series written as NIfTI in its own geometry; missing slices, mixed series "
                        "and non-image files are refused. See docs/2d-ct-dicom.md.")
    dc.add_argument("src", type=Path, help="folder of case folders, or a mapping file (.json)")
    _target(dc)
    dc.add_argument("--labels", type=Path, default=None, help="folder of label maps CASE.nii.gz on the series' grid; "
                    "cases with one go to imagesTr/labelsTr, the others to imagesTs")
    args = p.parse_args(argv)
    root = data_root(args.home)
    if args.format == "slices":
        paths = convert_slices(args.src, root, args.dataset_id, args.name, args.spacing, args.images, args.masks,
                               args.channel_name, args.workers, args.intercept)
    elif args.format == "dicom":
        paths = convert_dicom(args.src, root, args.dataset_id, args.name, args.labels, args.workers)
    else:
        paths = convert_brats(args.src, root, args.dataset_id, args.name, args.workers)
    n_tr = len(list((paths.raw / "labelsTr").glob("*.nii.gz"))) if (paths.raw / "labelsTr").is_dir() else 0
    n_ts = len(list((paths.raw / "imagesTs").glob("*_0000.nii.gz"))) if (paths.raw / "imagesTs").is_dir() else 0
    print(f"{paths.raw}: {n_tr} training case(s), {n_ts} test case(s); next: autoseg-plan -d {paths.dataset_id}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-convert", _main, argv)
