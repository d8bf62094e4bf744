"""What produced an output: a JSON record beside it, so a rerun redoes exactly what is out of date.

``OUT/provenance/CASE.json`` for each case of a prediction or an ensemble (``summary.provenance.json`` beside an
evaluation's ``summary.json``) holds what the outputs depend on: the model (SHA-256 of each fold network's
weights and of the plan and dataset description it predicts with), the identity of every input file (name, size
and SHA-256 of its content) and the options that change the result. It is written after the outputs and
removed before they are rewritten, so a record always describes the outputs beside it. A rerun compares the
record with what it would write now: equal -> the case is up to date and skipped; different, or no record
(outputs of an older version or another tool) -> the case is *stale* and redone, and the summary line says so.
Left out on purpose: the device, batch size and torch.compile, which change results by rounding only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoseg.io import write_json_atomic

FOLDER = "provenance"
PARTS = {"model": "another model", "inputs": "changed inputs", "options": "other options"}


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """A file as a record names it: name, size and the SHA-256 of its content, streamed (about 50 ms for the four
    images of a BraTS case, 9 MB; reading them takes 330 ms). Content, not times: a file replaced by another of the
    same name, size and modification time is told apart, and a copy or a moved data root, whatever its times and
    inodes, is the same file (not redone)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"name": Path(path).name, "size": size, "sha256": digest}


def model_identity(networks: Sequence[Any], plan: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """A loaded model by content: the SHA-256 of each fold network's weights (as loaded: the checkpoint's, however it
    was found) and of the plan and dataset description it predicts with. Retraining changes it; copying does not."""
    def digest(obj: Any) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

    import torch

    weights = []
    for net in networks:
        h = hashlib.sha256()
        for key, tensor in net.state_dict().items():
            t = tensor.detach().cpu()
            t = t.float() if t.dtype in (torch.bfloat16, torch.float16) else t   # (numpy has no bfloat16)
            h.update(key.encode())
            h.update(t.contiguous().numpy().tobytes())
        weights.append(h.hexdigest())
    return {"weights": weights, "plan": digest(plan), "dataset": digest(dataset)}


def postprocessing_identity(plan: Any) -> dict[str, Any] | None:
    """What of a :class:`~autoseg.postprocessing.PostprocessingPlan` changes a segmentation (not its Dice notes)."""
    if plan is None:
        return None
    return {"foreground_largest_component": plan.foreground_largest_component,
            "largest_component": list(plan.largest_component)}


def case_record(out_dir: str | os.PathLike, case_id: str) -> Path:
    """Where the record of a case's outputs lies: ``OUT/provenance/CASE.json`` (no longer a name than the
    outputs', so a case id that fits the file system fits here too)."""
    return Path(out_dir) / FOLDER / f"{case_id}.json"


def make_record(command: str, inputs: Sequence[str | os.PathLike], options: dict[str, Any],
                model: Any = None) -> dict[str, Any]:
    """The record of one output: JSON-ready, without a time stamp (two runs that do the same write the same)."""
    record: dict[str, Any] = {"command": command}
    if model is not None:
        record["model"] = model
    record["inputs"] = [file_identity(p) for p in inputs]
    record["options"] = options
    return json.loads(json.dumps(record))   # (tuples -> lists: compared with what is read back)


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A record; None when there is none or it is unreadable (the outputs it would describe are then stale)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def staleness(path: str | os.PathLike, record: dict[str, Any]) -> str | None:
    """None when the outputs were made as ``record`` says (the record at ``path`` equals it), else why not."""
    old = read_record(path)
    if old is None:
        return "no record of what made them"
    if old == record:
        return None
    differs = [why for part, why in PARTS.items() if old.get(part) != record.get(part)]
    return ", ".join(differs) or "another command"


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Written last, after the outputs it describes (atomically)."""
    write_json_atomic(path, record)


def drop_record(path: str | os.PathLike) -> None:
    """Removed first, before outputs are rewritten: a rewrite stopped half-way is never taken for up to date.
    (Where it cannot be removed, the outputs cannot be written either, and that failure is what is reported.)"""
    with contextlib.suppress(OSError):
        Path(path).unlink()


def stale_summary(reasons: dict[str, str]) -> str:
    """``2 of them stale, redone: another model`` for the summary line; empty when nothing was stale."""
    if not reasons:
        return ""
    why = sorted(set(reasons.values()), key=list(reasons.values()).index)
    return f"{len(reasons)} of them stale, redone: {'; '.join(why)}"
