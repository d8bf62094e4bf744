"""The cases autoseg-predict reads: found in an input folder (raw layout or BraTS folders) and read channel by
channel, each problem one line naming its file; and ``--missing`` channel names resolved to numbers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoseg.brats import find_brats_case
from autoseg.dataset import DatasetInfo, check_case_id, is_os_litter
from autoseg.errors import fail
from autoseg.input_forms import InputCase
from autoseg.io import Geometry, read_channels


def find_input_cases(folder: str | Path, num_channels: int, file_ending: str = ".nii.gz") -> list[InputCase]:
    """Cases in ``folder``: raw layout (``CASE_0000.nii.gz`` ...), BraTS-named case folders, or one BraTS folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise fail(folder, "input folder not found", "give the folder holding the cases with -i")
    single = find_brats_case(folder)
    if single is not None:
        return [InputCase(single.case_id, single.channels, single.convention)]
    cases: dict[str, InputCase] = {}
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    entries = [p for p in folder.iterdir() if not is_os_litter(p.name)]
    ids = sorted({m.group(1) for p in entries if p.is_file() and (m := pattern.match(p.name))})
    for cid in ids:
        cases[cid] = InputCase(cid, tuple(folder / f"{cid}_{c:04d}{file_ending}" for c in range(num_channels)))
    for sub in sorted(p for p in entries if p.is_dir()):
        bc = find_brats_case(sub)
        if bc is not None:
            cases.setdefault(bc.case_id, InputCase(bc.case_id, bc.channels, bc.convention))
    if not cases:
        raise fail(folder, f"no cases found (expected CASE_0000{file_ending} ... or BraTS case folders)",
                   "check -i; see docs/inference.md for the accepted layouts")
    return [cases[k] for k in sorted(cases)]


def read_input_case(case: InputCase, missing: Sequence[int] = ()) -> tuple[list[np.ndarray], Geometry]:
    """Read every channel; a missing, unreadable or mismatched channel is an AutosegError naming its file.

    Channels in ``missing`` are not read (their files may be absent): they come back as zeros, which
    :class:`~autoseg.inference.predictor.Predictor` keeps at zero after normalisation."""
    check_case_id(case.case_id, case.channels[0])   # the id names the output file: no '..' or separators
    if case.form is not None:   # PNG/TIFF slices or DICOM series: read the way their conversion reads them
        return case.form.read(missing)
    if len(missing) >= len(case.channels):
        raise fail(case.channels[0], "every channel is marked missing", "--missing may name all channels but one")
    for c, path in enumerate(case.channels):
        if c not in missing and not path.is_file():
            raise fail(path, "channel file missing",
                       "add it, remove the case from the input folder, or predict without it: --missing CHANNEL")
    images, geometry = read_channels(case.channels, missing)
    for c, (path, image) in enumerate(zip(case.channels, images)):
        if c not in missing and not image.any():   # e.g. a missing MRI sequence filled with zeros: a silent guess
            raise fail(path, "image is all zero", "re-export it, or predict without this channel: --missing CHANNEL")
    return images, geometry


def channel_indices(names: Sequence[str], info: DatasetInfo, where: str | Path | None = None) -> tuple[int, ...]:
    """Channel numbers for names from dataset.json's channel_names (any case) or numbers (``0``, ``3``)."""
    by_name = {str(v).lower(): int(k) for k, v in info.channel_names.items()}
    out = []
    for name in names:
        if name.isdigit() and int(name) < info.num_channels:
            out.append(int(name))
        elif name.lower() in by_name:
            out.append(by_name[name.lower()])
        else:
            raise fail(where, f"--missing {name}: no such channel",
                       f"use one of {', '.join(str(v) for v in info.channel_names.values())} or 0..{info.num_channels - 1}")
    if len(set(out)) >= info.num_channels:
        raise fail(where, "--missing names every channel", "at least one channel must be given to predict from")
    return tuple(sorted(set(out)))
