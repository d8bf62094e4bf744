"""On-disk format of preprocessed cases, one configuration folder each (see docs/preprocessing.md).

Per case: ``CASE_data.npy`` (float32, C x z x y x), ``CASE_seg.npy`` (int8, z x y x),
``CASE_fg.npz`` (sampled foreground voxel positions per output) and ``CASE.json``
(properties). Uncompressed ``.npy`` because training reads random patches from memory-mapped
files (measured: benchmarks/preprocess_format.py). The JSON is written last: a case is complete
exactly when it exists, so a killed run leaves nothing that a rerun trusts.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.io import read_json, save_npy_atomic, save_npz_atomic, temporary_prefix, write_json_atomic
from autoseg.preprocessing.properties import CaseProperties

FORMAT_VERSION = 1
MAX_FG_LOCATIONS = 10_000


@dataclass(frozen=True)
class PreprocessedCase:
    """A preprocessed case as training reads it; ``data`` and ``seg`` are memory-mapped when asked. ``prior``: for
    a cascade, the previous stage's label map (z, y, x) in this grid (:mod:`autoseg.training.cascade`)."""

    case_id: str
    data: np.ndarray
    seg: np.ndarray | None
    props: CaseProperties
    fg_locations: dict[str, np.ndarray]
    prior: np.ndarray | None = None


def case_files(config_dir: Path, case_id: str) -> dict[str, Path]:
    """The files of one case; ``props`` is the completion marker and is written last."""
    return {"data": config_dir / f"{case_id}_data.npy", "seg": config_dir / f"{case_id}_seg.npy",
            "fg": config_dir / f"{case_id}_fg.npz", "props": config_dir / f"{case_id}.json"}


def foreground_locations(seg: np.ndarray, info: DatasetInfo, case_id: str,
                         max_locations: int = MAX_FG_LOCATIONS) -> dict[str, np.ndarray]:
    """Per foreground output (region or label), up to ``max_locations`` voxel positions (N, 3) inside it.

    Small regions are kept whole, so training can centre patches on a tiny enhancing tumour; the
    sample of a large one is random but fixed per case id (reruns write the same file).
    """
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    out = {}
    for name, values in zip(info.foreground_names, info.regions):
        where = np.argwhere(np.isin(seg, values))
        if len(where) > max_locations:
            where = where[np.sort(rng.choice(len(where), max_locations, replace=False))]
        out[name] = where.astype(np.int16 if max(seg.shape) < 2 ** 15 else np.int32)
    return out


def save_case(config_dir: Path, case_id: str, data: np.ndarray, seg: np.ndarray | None, props: CaseProperties,
              fg_locations: dict[str, np.ndarray], plan_key: str, content_key: str = "") -> None:
    """Write one case, marker last; the old marker goes first so a half-rewritten case is never trusted."""
    files = case_files(config_dir, case_id)
    files["props"].unlink(missing_ok=True)
    remove_stale_temporaries(config_dir, case_id)
    save_npy_atomic(files["data"], np.ascontiguousarray(data, dtype=np.float32))
    if seg is not None:
        save_npy_atomic(files["seg"], np.ascontiguousarray(seg, dtype=np.int8))
    else:
        files["seg"].unlink(missing_ok=True)
    save_npz_atomic(files["fg"], compressed=True, **{f"fg{i}": v for i, v in enumerate(fg_locations.values())})
    write_json_atomic(files["props"], {"format_version": FORMAT_VERSION, "case_id": case_id, "plan_key": plan_key,
                                       "content_key": content_key, "foreground_names": list(fg_locations),
                                       "properties": props.to_dict()})


def link_case(src_dir: Path, dst_dir: Path, case_id: str, marker: dict) -> None:
    """Hard-link a complete case's arrays from another configuration folder (same content, no extra
    disk), then write ``marker`` last. Raises OSError where the file system has no hard links."""
    src, dst = case_files(src_dir, case_id), case_files(dst_dir, case_id)
    dst["props"].unlink(missing_ok=True)
    remove_stale_temporaries(dst_dir, case_id)
    for kind in ("data", "seg", "fg"):
        if not src[kind].is_file():
            dst[kind].unlink(missing_ok=True)
            continue
        tmp = dst_dir / f".{dst[kind].stem}.{secrets.token_hex(4)}.tmp{dst[kind].suffix}"
        os.link(src[kind], tmp)
        os.replace(tmp, dst[kind])
    write_json_atomic(dst["props"], marker)


def remove_stale_temporaries(config_dir: Path, case_id: str) -> None:
    """Delete temporary files a killed writer left for this case (``.CASE_data.XXXX.tmp.npy`` ...)."""
    if not config_dir.is_dir():
        return
    prefixes = "|".join(re.escape(temporary_prefix(p)) for p in case_files(config_dir, case_id).values())
    pattern = re.compile(rf"^({prefixes})[^.]+\.tmp\.(npy|npz|json)$")
    for p in config_dir.iterdir():
        if pattern.match(p.name):
            p.unlink(missing_ok=True)


def read_marker(config_dir: Path, case_id: str) -> dict | None:
    """The case's JSON marker, or None when the case is absent, unfinished or unreadable."""
    path = case_files(config_dir, case_id)["props"]
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
    except Exception:  # noqa: BLE001 - an unreadable marker just means "redo the case"
        return None
    if not isinstance(marker, dict) or marker.get("format_version") != FORMAT_VERSION:
        return None
    return marker if case_files(config_dir, case_id)["data"].is_file() else None


def is_complete(config_dir: Path, case_id: str, plan_key: str | None = None) -> bool:
    """True if the case was fully written (and, given ``plan_key``, with the same plan)."""
    marker = read_marker(config_dir, case_id)
    return marker is not None and (plan_key is None or marker.get("plan_key") == plan_key)


def list_preprocessed_cases(config_dir: Path) -> list[str]:
    """Ids of the complete cases in a configuration folder, sorted."""
    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        return []
    ids = [p.stem for p in config_dir.glob("*.json") if not p.name.startswith(".")]
    return sorted(cid for cid in ids if (config_dir / f"{cid}_data.npy").is_file())


def load_case(config_dir: Path, case_id: str, mmap: bool = True) -> PreprocessedCase:
    """Read one case; ``data``/``seg`` are read-only memory maps when ``mmap`` (fast random patches)."""
    config_dir = Path(config_dir)
    marker = read_marker(config_dir, case_id)
    files = case_files(config_dir, case_id)
    if marker is None:
        raise fail(files["props"], "case is not preprocessed, unfinished or from an older version",
                   "run autoseg-preprocess for this configuration")
    if marker.get("foreground_names") and not files["seg"].is_file():   # written with a label that is gone now
        raise fail(files["seg"], "label array missing (the case was preprocessed with one)",
                   f"delete {files['props'].name} next to it and rerun autoseg-preprocess, which then redoes the case")
    mode = "r" if mmap else None
    with _damaged_file_is_one_line(files["data"], files["props"]):
        data = np.load(files["data"], mmap_mode=mode)
    with _damaged_file_is_one_line(files["seg"], files["props"]):
        seg = np.load(files["seg"], mmap_mode=mode) if files["seg"].is_file() else None
    with _damaged_file_is_one_line(files["fg"], files["props"]), np.load(files["fg"]) as fg:
        locations = {name: fg[f"fg{i}"].astype(np.int64) for i, name in enumerate(marker["foreground_names"])}
    return PreprocessedCase(case_id, data, seg, CaseProperties.from_dict(marker["properties"]), locations)


@contextlib.contextmanager
def _damaged_file_is_one_line(path: Path, marker: Path) -> Iterator[None]:
    """A preprocessed file cut short or garbled after it was written (a partial copy, a bad disk) -> one line."""
    try:
        yield
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise fail(path, f"preprocessed file is truncated or corrupt ({type(e).__name__}: {str(e)[:80]})",
                   f"delete {marker.name} next to it and rerun autoseg-preprocess, which then redoes the case") from None
