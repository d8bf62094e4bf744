"""autoseg-evaluate under bad input (issue 16, items 1, 2 and 9), through the real command.

A failed evaluation keeps earlier results byte-identical; a reference label with a non-integer or undeclared
value is refused in one line naming it; references and predictions are read in any ending the dataset accepts.
``AUTOSEG_RELIABILITY_DOC=docs/reliability.md`` writes the rows collected here into that page's evaluation table.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_reliability import expect_one_line, run, snapshot

from autoseg.brats import dataset_json_for
from autoseg.cli.evaluate import main as evaluate_main
from autoseg.io import Geometry, read_image, write_image, write_json_atomic
from autoseg.synthetic import make_case

SHAPE = (24, 32, 32)
GEOMETRY = Geometry(tuple(reversed(SHAPE)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
ROWS: list[dict[str, str]] = []
BEGIN, END = "<!-- begin generated: evaluation -->", "<!-- end generated: evaluation -->"


def record(case: str, code: int, lines: list[str], kept: str, base: Path) -> None:
    ROWS.append({"case": case, "message": " / ".join(lines).replace(str(base), "…"), "code": str(code), "kept": kept})


@pytest.fixture(scope="module", autouse=True)
def write_doc_rows():
    """After the module: with AUTOSEG_RELIABILITY_DOC=FILE, replace the evaluation table in FILE."""
    yield
    target = os.environ.get("AUTOSEG_RELIABILITY_DOC")
    if not target or not ROWS:
        return
    rows = ["| input | command | message shown | exit | kept intact |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| {r['case']} | `autoseg-evaluate` | `{r['message'].replace('|', chr(92) + '|')}` | {r['code']} | "
             f"{r['kept']} |" for r in sorted(ROWS, key=lambda r: r["case"])]
    doc = Path(target)
    head, rest = doc.read_text().split(BEGIN, 1)
    doc.write_text(f"{head}{BEGIN}\n" + "\n".join(rows) + f"\n{END}{rest.split(END, 1)[1]}")


def _dataset(root: Path, ending: str = ".nii.gz", n: int = 3) -> tuple[Path, Path, Path]:
    """``labels/`` (references), ``pred/`` (perfect predictions, same ending) and a dataset.json."""
    ds = dataset_json_for("brats2020", n, "Synthetic") | {"file_ending": ending}
    write_json_atomic(root / "dataset.json", ds)
    for i in range(n):
        label = make_case(SHAPE, seed=i).label
        for folder in ("labels", "pred"):
            write_image(root / folder / f"case_{i:03d}{ending}", label, GEOMETRY)
    return root / "labels", root / "pred", root / "dataset.json"


def _args(pred: Path, ref: Path, ds: Path, out: Path) -> list:
    return ["-p", pred, "-r", ref, "--dataset-json", ds, "-o", out]


@pytest.fixture
def evaluated(tmp_path: Path, capsys) -> tuple[Path, Path, Path, Path, dict[str, str]]:
    """References, predictions, dataset.json, and an output folder holding a good earlier evaluation (with hashes)."""
    ref, pred, ds = _dataset(tmp_path)
    out = tmp_path / "ev"
    code, lines = run(evaluate_main, _args(pred, ref, ds, out), capsys)
    assert code == 0 and json.loads((out / "summary.json").read_text())["num_cases"] == 3, lines
    return ref, pred, ds, out, snapshot(out)


def test_no_matching_prediction_keeps_the_earlier_results(evaluated, tmp_path: Path, capsys) -> None:
    ref, pred, ds, out, before = evaluated
    other = tmp_path / "other"                   # predictions named unlike every reference
    other.mkdir()
    for p in pred.iterdir():
        shutil.copy(p, other / p.name.replace("case_", "patient_"))
    code, lines = run(evaluate_main, _args(other, ref, ds, out), capsys)
    line = expect_one_line(code, lines, other, "autoseg-evaluate")
    assert "no prediction matches a reference" in line and snapshot(out) == before
    record("no prediction matches a reference", code, lines, "the earlier summary.json and metrics.csv", tmp_path)


def test_nothing_scored_keeps_the_earlier_results(evaluated, tmp_path: Path, capsys) -> None:
    ref, pred, ds, out, before = evaluated
    broken = tmp_path / "broken"                 # every prediction unreadable: nothing scored
    broken.mkdir()
    for p in pred.iterdir():
        (broken / p.name).write_bytes(p.read_bytes()[:100])
    code, lines = run(evaluate_main, _args(broken, ref, ds, out), capsys)
    assert len(lines) == 4, lines
    assert all(lines[i].startswith(f"failed: {broken / f'case_{i:03d}.nii.gz'}: ") for i in range(3)), lines
    expect_one_line(code, lines[3:], broken, "autoseg-evaluate")
    assert "none of the 3 case(s) could be evaluated" in lines[3] and snapshot(out) == before
    record("every prediction unreadable", code, lines, "the earlier summary.json and metrics.csv", tmp_path)


def test_disk_full_on_the_second_file_keeps_both(evaluated, tmp_path: Path, capsys, monkeypatch) -> None:
    ref, pred, ds, out, before = evaluated

    def disk_full(*_args) -> None:               # summary.json is complete, metrics.csv cannot be written
        raise OSError(errno.ENOSPC, "No space left on device")

    (pred / "case_000.nii.gz").unlink()          # a different result, so a half-replaced pair would show
    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    code, lines = run(evaluate_main, _args(pred, ref, ds, out), capsys)
    monkeypatch.undo()
    line = expect_one_line(code, [ln for ln in lines if not ln.startswith("failed: ")], out / "metrics.csv",
                           "autoseg-evaluate")
    assert "no space left" in line and snapshot(out) == before
    assert sorted(os.listdir(out)) == ["metrics.csv", "summary.json", "summary.provenance.json"]  # no temporary
    record("disk full while writing metrics.csv (after summary.json)", code, [line],
           "the earlier summary.json and metrics.csv (both or neither are replaced)", tmp_path)


@pytest.mark.parametrize("what,value", [("reference label holding 0.5", 0.5),
                                        ("reference label value not in dataset.json", 3)])
def test_reference_label_values_are_checked(tmp_path: Path, capsys, what: str, value: float) -> None:
    ref, pred, ds = _dataset(tmp_path)
    target = ref / "case_001.nii.gz"
    label, geom = read_image(target)
    bad = label.astype(np.float32 if value % 1 else label.dtype)
    bad[label == 2] = value
    write_image(target, bad, geom)
    before = snapshot(ref, pred)
    code, lines = run(evaluate_main, _args(pred, ref, ds, tmp_path / "ev"), capsys)
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert code == 2 and len(failed) == 1 and failed[0].startswith(f"failed: {target}: ") and "; " in failed[0], lines
    assert f"[{value}]" in failed[0]
    assert snapshot(ref, pred) == before
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert sorted(summary["per_case"]) == ["case_000", "case_002"]     # the others are still scored
    record(what, code, failed, "predictions, references; the other cases are scored", tmp_path)


@pytest.mark.parametrize("ending,pred_ending", [(".mha", ".mha"), (".nrrd", ".nii.gz"), (".nii", ".nii")])
def test_references_and_predictions_in_the_datasets_file_ending(tmp_path: Path, capsys, ending: str,
                                                                pred_ending: str) -> None:
    ref, pred, ds = _dataset(tmp_path, ending)
    for p in sorted(pred.iterdir()):            # predictions may come in another readable ending
        label, geom = read_image(p)
        p.unlink()
        write_image(pred / f"{p.name[:-len(ending)]}{pred_ending}", label, geom)
    (ref / ".case_000.tmp.mha").write_bytes(b"a killed writer's leftover")   # hidden: never a case
    code, lines = run(evaluate_main, _args(pred, ref, ds, tmp_path / "ev"), capsys)
    assert code == 0, lines
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["num_cases"] == 3 and summary["mean"]["whole tumour"]["dice"] == 1.0
    if ending == ".mha":
        record(f"references and predictions as {ending} (dataset.json file_ending)", code, lines[-1:],
               "-", tmp_path)


def test_a_case_in_two_endings_is_reported_not_guessed(tmp_path: Path, capsys) -> None:
    ref, pred, ds = _dataset(tmp_path)
    label, geom = read_image(pred / "case_001.nii.gz")
    write_image(pred / "case_001.mha", np.zeros_like(label), geom)
    code, lines = run(evaluate_main, _args(pred, ref, ds, tmp_path / "ev"), capsys)
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert code == 2 and len(failed) == 1 and "case_001" in failed[0] and "keep one of them" in failed[0], lines
    assert sorted(json.loads((tmp_path / "ev" / "summary.json").read_text())["per_case"]) == ["case_000", "case_002"]
