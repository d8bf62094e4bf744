"""Reliability (issue 8): bad input, a full disk, unwritable folders and unsafe checkpoints, through the real commands.

Every case runs a console command's ``main(argv)`` in this process (so writes can be patched) and checks what a
user sees and keeps: exit code 2, one line per problem on stderr that names the file and says the fix (tqdm
progress bars aside), no traceback, and every file written before byte-identical afterwards.
The messages are collected in ``RESULTS``; ``AUTOSEG_RELIABILITY_DOC=docs/reliability.md`` writes them into the
table of that page (see ``write_doc_table``), so the page shows what the commands really print.
Interruptions (kill -9 and rerun) are in ``test_interruptions.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.checkpoint import save_checkpoint
from autoseg.cli.convert import main as convert_main
from autoseg.cli.evaluate import main as evaluate_main
from autoseg.cli.plan import main as plan_main
from autoseg.cli.predict import main as predict_main
from autoseg.cli.preprocess import main as preprocess_main
from autoseg.cli.train import main as train_main
from autoseg.dataset import DatasetInfo
from autoseg.io import Geometry, read_image, write_image
from autoseg.network import network_for_dataset
from autoseg.paths import DatasetPaths
from autoseg.plans import Plans
from autoseg.synthetic import write_brats_folders, write_raw_dataset

DS = "Dataset001_Synthetic"
SHAPE = (24, 32, 32)
PLAN_ARGS = ["--vram", "0.5", "--base-features", "4", "--max-features", "16", "-np", "1"]
PREDICT_ARGS = ["-f", "0", "--no-tta", "--device", "cpu", "--precision", "fp32"]
RESULTS: list[dict[str, str]] = []
_BAR = re.compile(r"[\w .\-]*:\s*(\d+%\|[^|]*\|\s*)?\d+/\d+ \[[^\]]*\]")   # one state of a tqdm bar


# ---------------------------------------------------------------- helpers

def run(main: Callable, argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run a console command's main(argv); return its exit code and its non-empty stderr lines."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = []
    for line in err.splitlines():   # drop progress bars (lines of their own); a message glued to one stays
        for part in line.split("\r"):
            part = part.replace("\x1b[A", "").strip()
            if part and not _BAR.fullmatch(part):
                lines.append(part)
    return code, lines


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (the things that must survive a failed command)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def record(case: str, command: str, code: int, lines: list[str], kept: str, base: Path) -> None:
    shown = " / ".join(lines).replace(str(base), "…")
    RESULTS.append({"case": case, "command": command, "message": shown, "code": str(code), "kept": kept})


def expect_one_line(code: int, lines: list[str], path: Path | str, prog: str) -> str:
    """Exit 2 and exactly one message line, which names ``path`` and gives a fix (``problem; fix``)."""
    assert code == 2, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"{prog}: error: ") and str(path) in line and "; " in line, line
    return line


def _img(raw: Path, case: int, channel: int, subset: str = "Tr") -> Path:
    return raw / f"images{subset}" / f"case_{case:03d}_{channel:04d}.nii.gz"


def _lab(raw: Path, case: int) -> Path:
    return raw / "labelsTr" / f"case_{case:03d}.nii.gz"


def _rewrite(path: Path, change: Callable[[np.ndarray, Geometry], tuple[np.ndarray, Geometry]]) -> None:
    array, geometry = read_image(path, allow_nonfinite=True)
    write_image(path, *change(array, geometry))


# The damage a file can have, each as a function that does it to one file.
def _missing(p: Path) -> None:
    p.unlink()


def _shape(p: Path) -> None:
    def f(a, g):
        a = np.ascontiguousarray(a[:-4])
        return a, Geometry(tuple(reversed(a.shape)), g.spacing, g.origin, g.direction)
    _rewrite(p, f)


def _spacing(p: Path) -> None:
    _rewrite(p, lambda a, g: (a, Geometry(g.size, (1.0, 1.0, 2.5), g.origin, g.direction)))


def _origin(p: Path) -> None:
    _rewrite(p, lambda a, g: (a, Geometry(g.size, g.spacing, (7.0, 0.0, 0.0), g.direction)))


def _direction(p: Path) -> None:
    _rewrite(p, lambda a, g: (a, Geometry(g.size, g.spacing, g.origin, (-1.0, 0, 0, 0, 1, 0, 0, 0, 1))))


def _undeclared_label(p: Path) -> None:
    _rewrite(p, lambda a, g: (np.where(a == 4, 3, a).astype(a.dtype), g))   # 3 is no brats2020 label


def _nan(p: Path) -> None:
    def f(a, g):
        a = a.astype(np.float32)
        a[a.shape[0] // 2, 10, 10:13] = np.nan
        return a, g
    _rewrite(p, f)


def _inf(p: Path) -> None:
    def f(a, g):
        a = a.astype(np.float32)
        a[a.shape[0] // 2, 10, 10] = np.inf
        return a, g
    _rewrite(p, f)


def _zero(p: Path) -> None:
    _rewrite(p, lambda a, g: (np.zeros_like(a), g))


def _truncated(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _corrupt(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).bytes(3000))


def _2d(p: Path) -> None:
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkFloat32), str(p))


def _4d(p: Path) -> None:
    sitk.WriteImage(sitk.Image([32, 32, 24, 2], sitk.sitkFloat32), str(p))


IMAGE_DAMAGE = {
    "missing channel file": _missing, "channel with another shape": _shape, "channel with another spacing": _spacing,
    "channel with another origin": _origin, "channel with another direction": _direction, "NaN voxels": _nan,
    "inf voxels": _inf, "all-zero image": _zero, "truncated .nii.gz": _truncated, "corrupt .nii.gz (random bytes)": _corrupt,
    "2D image": _2d, "4D image": _4d,
}
LABEL_DAMAGE = {
    "label with another shape": _shape, "label with another spacing": _spacing, "label with another origin": _origin,
    "label with another direction": _direction, "label values not in dataset.json": _undeclared_label,
    "empty label": _zero, "truncated label": _truncated,
}


# ---------------------------------------------------------------- a small planned, preprocessed, "trained" dataset

def fold_checkpoint(paths: DatasetPaths, fold: int = 0, seed: int = 0, configuration: dict | None = None,
                    name: str = "checkpoint_final.pt") -> Path:
    """A valid checkpoint of the current plan (untrained weights), as autoseg-train writes it."""
    plan = Plans.load(paths.plans_json).configuration("3d_fullres")
    info = DatasetInfo.load(paths.dataset_json)
    config = configuration or asdict(plan)
    torch.manual_seed(seed)
    from autoseg.inference.predictor import configuration_from_dict
    net = network_for_dataset(configuration_from_dict(config).network, info)
    path = paths.fold_dir("3d_fullres", fold) / name
    save_checkpoint(path, {"configuration": config, "dataset": info.to_dict(), "network_state": net.state_dict(),
                           "epoch": 0, "dataset_folder": paths.name, "fold": str(fold)})
    return path


def _quiet(main: Callable, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 0


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """home/ planned (tiny) and preprocessed, fold 0 'trained', imagesTs predicted into pred/."""
    root = tmp_path_factory.mktemp("reliability")
    home = root / "home"
    write_raw_dataset(home / "raw" / DS, n_train=4, n_test=2, shape=SHAPE, seed=0)
    _quiet(plan_main, ["--home", home, *PLAN_ARGS])
    _quiet(preprocess_main, ["--home", home, "-np", "1"])
    fold_checkpoint(DatasetPaths(home, DS))
    _quiet(predict_main, ["-i", home / "raw" / DS / "imagesTs", "-o", root / "pred", "--home", home, *PREDICT_ARGS])
    return root


@pytest.fixture
def work(base: Path, tmp_path: Path) -> Path:
    """A private copy of ``base`` to damage."""
    shutil.copytree(base, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def _paths(work: Path) -> DatasetPaths:
    return DatasetPaths(work / "home", DS)


@pytest.fixture(scope="module", autouse=True)
def write_doc_table():
    """After the module: with AUTOSEG_RELIABILITY_DOC=FILE, replace the generated table in FILE."""
    yield
    target = os.environ.get("AUTOSEG_RELIABILITY_DOC")
    if not target or not RESULTS:
        return
    rows = ["| input | command | message shown | exit | kept intact |", "| --- | --- | --- | --- | --- |"]
    for r in sorted(RESULTS, key=lambda r: (r["command"], r["case"])):
        msg = r["message"].replace("|", "\\|")
        rows.append(f"| {r['case']} | `{r['command']}` | `{msg}` | {r['code']} | {r['kept']} |")
    doc = Path(target)
    text = doc.read_text() if doc.is_file() else "<!-- begin generated -->\n<!-- end generated -->\n"
    start, end = "<!-- begin generated -->", "<!-- end generated -->"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    doc.write_text(f"{head}{start}\n" + "\n".join(rows) + f"\n{end}{tail}")


# ---------------------------------------------------------------- autoseg-plan: the integrity check

@pytest.mark.parametrize("what,kind,damage", [*((k, "img", f) for k, f in IMAGE_DAMAGE.items()),
                                              *((k, "lab", f) for k, f in LABEL_DAMAGE.items())],
                         ids=[*IMAGE_DAMAGE, *LABEL_DAMAGE])
def test_plan_lists_each_bad_file_and_keeps_the_old_plan(work: Path, capsys, what: str, kind: str, damage) -> None:
    paths = _paths(work)
    target = _img(paths.raw, 1, 2) if kind == "img" else _lab(paths.raw, 2)
    before = snapshot(paths.preprocessed)
    damage(target)
    code, lines = run(plan_main, ["--home", work / "home", *PLAN_ARGS], capsys)
    assert code == 2, lines
    assert lines[0].startswith(f"autoseg-plan: error: dataset check of {paths.raw}: ") and "problem(s) found" in lines[0]
    problems = lines[1:]
    assert problems and any(str(target) in p for p in problems), lines
    for p in problems:   # one line per problem, each naming its file (or folder) and the fix
        assert re.match(rf"{re.escape(str(paths.raw))}\S*: ", p) and "; " in p, p
    assert snapshot(paths.preprocessed) == before   # plans.json, fingerprint.json, preprocessed cases
    record(what, "autoseg-plan", code, lines, "plans.json, fingerprint.json, preprocessed/", work)


def test_plan_reports_duplicate_and_unsafe_case_ids(work: Path, capsys) -> None:
    paths = _paths(work)
    before = snapshot(paths.preprocessed)
    dup = paths.raw / "imagesTr" / "case_001_0000.nii"
    sitk.WriteImage(sitk.ReadImage(str(_img(paths.raw, 1, 0))), str(dup), useCompression=False)
    for c in range(4):     # same id up to upper/lower case
        shutil.copy(_img(paths.raw, 3, c), paths.raw / "imagesTr" / f"CASE_003_{c:04d}.nii.gz")
    shutil.copy(_lab(paths.raw, 3), paths.raw / "labelsTr" / "CASE_003.nii.gz")
    code, lines = run(plan_main, ["--home", work / "home", *PLAN_ARGS], capsys)
    assert code == 2 and any(str(dup) in ln and "duplicate" in ln for ln in lines), lines
    assert any("differ only in upper/lower case" in ln for ln in lines), lines
    record("duplicate case ids (.nii next to .nii.gz; ids differing in case)", "autoseg-plan", code, lines,
           "plans.json, preprocessed/", work)
    assert snapshot(paths.preprocessed) == before
    for name in ("..", "a\\b"):
        work2 = work.parent / f"u{len(name)}"
        shutil.copytree(work, work2)
        dup2 = work2 / "home" / "raw" / DS / "imagesTr" / "case_001_0000.nii"
        dup2.unlink()
        for p in (work2 / "home" / "raw" / DS).rglob("CASE_003*"):
            p.unlink()
        for c in range(4):
            shutil.copy(_img(work2 / "home" / "raw" / DS, 3, c), work2 / "home" / "raw" / DS / "imagesTr" / f"{name}_{c:04d}.nii.gz")
        code, lines = run(plan_main, ["--home", work2 / "home", *PLAN_ARGS], capsys)
        assert code == 2 and any(f"unsafe case id {name!r}" in ln for ln in lines), lines
        record(f"case id {name!r} (`..` / path separator)", "autoseg-plan", code, lines, "plans.json", work2)


@pytest.mark.parametrize("what,edit", [
    ("dataset.json missing a field", lambda d: json.dumps({k: v for k, v in d.items() if k != "labels"})),
    ("dataset.json malformed", lambda d: json.dumps(d)[:-5]),
    ("dataset.json not an object", lambda d: "[1, 2]"),
])
def test_bad_dataset_json_is_one_line(work: Path, capsys, what: str, edit) -> None:
    paths = _paths(work)
    d = json.loads(paths.dataset_json.read_text())
    paths.dataset_json.write_text(edit(d))
    before = snapshot(paths.preprocessed)
    for prog, main, argv in (("autoseg-plan", plan_main, PLAN_ARGS), ("autoseg-preprocess", preprocess_main, ["-np", "1"])):
        if prog == "autoseg-preprocess":   # a case not yet done, so the raw data is read
            for p in paths.config_dir("3d_fullres").glob("case_003*"):
                p.unlink()
            before = snapshot(paths.preprocessed)
        code, lines = run(main, ["--home", work / "home", *argv], capsys)
        expect_one_line(code, lines, paths.dataset_json, prog)
        assert snapshot(paths.preprocessed) == before
        record(what, prog, code, lines, "plans.json, preprocessed/", work)


# ---------------------------------------------------------------- autoseg-preprocess

@pytest.mark.parametrize("what,kind,damage", [*((k, "img", f) for k, f in IMAGE_DAMAGE.items()),
                                              *((k, "lab", f) for k, f in LABEL_DAMAGE.items())],
                         ids=[*IMAGE_DAMAGE, *LABEL_DAMAGE])
def test_preprocess_names_the_bad_file_and_keeps_finished_cases(work: Path, capsys, what: str, kind: str, damage) -> None:
    paths = _paths(work)
    out = paths.config_dir("3d_fullres")
    for p in out.glob("case_002*"):   # case 2 is new: not preprocessed yet
        p.unlink()
    before = snapshot(paths.preprocessed)
    target = _img(paths.raw, 2, 1) if kind == "img" else _lab(paths.raw, 2)
    damage(target)
    code, lines = run(preprocess_main, ["--home", work / "home", "-np", "1"], capsys)
    if what in ("empty label",):   # harmless to preprocess (the plan's check reports it); the case is written
        assert code == 0, lines
        record(what, "autoseg-preprocess", code, lines or ["(case preprocessed; autoseg-plan reports it)"],
               "preprocessed/", work)
        return
    expect_one_line(code, lines, target, "autoseg-preprocess")
    assert snapshot(paths.preprocessed) == before   # the other cases untouched, nothing of case 2 written
    assert not list(out.glob("case_002*")) and not list(out.glob(".*tmp*"))
    record(what, "autoseg-preprocess", code, lines, "plans.json, the other preprocessed cases", work)


# ---------------------------------------------------------------- autoseg-predict: bad case skipped, others finish

PREDICT_DAMAGE = {k: IMAGE_DAMAGE[k] for k in ("missing channel file", "channel with another shape",
                                               "channel with another spacing", "channel with another origin",
                                               "channel with another direction", "NaN voxels", "inf voxels",
                                               "truncated .nii.gz", "corrupt .nii.gz (random bytes)", "2D image",
                                               "4D image")}


# the fast tier keeps one damage of each kind (missing, bad values, unreadable, wrong dimensionality)
FAST_DAMAGE = ("missing channel file", "NaN voxels", "truncated .nii.gz", "4D image")


@pytest.mark.parametrize("what,damage", [pytest.param(k, v, id=k, marks=() if k in FAST_DAMAGE else pytest.mark.slow)
                                         for k, v in PREDICT_DAMAGE.items()])
def test_predict_skips_a_bad_case_and_finishes_the_others(work: Path, capsys, what: str, damage) -> None:
    paths = _paths(work)
    inp, out = work / "in", work / "out"
    shutil.copytree(paths.raw / "imagesTs", inp)
    out.mkdir()
    shutil.copy(work / "pred" / "case_004.nii.gz", out / "earlier.nii.gz")   # an earlier prediction
    before = snapshot(out)
    target = inp / "case_005_0001.nii.gz"
    damage(target)
    code, lines = run(predict_main, ["-i", inp, "-o", out, "--home", work / "home", *PREDICT_ARGS], capsys)
    assert code == 2, lines
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert len(failed) == 1 and str(target) in failed[0] and "; " in failed[0], lines
    assert lines[-1].startswith("1 written, 0 already done, 1 failed") and len(lines) == 2, lines
    assert sorted(p.name for p in out.iterdir()) == ["case_004.nii.gz", "earlier.nii.gz", "provenance"]
    assert (out / "case_004.nii.gz").read_bytes() == (work / "pred" / "case_004.nii.gz").read_bytes()
    assert all(snapshot(out)[k] == v for k, v in before.items())
    record(what, "autoseg-predict", code, lines, "earlier predictions; the good case is written", work)


@pytest.mark.slow
def test_predict_refuses_an_unsafe_case_id(work: Path, capsys) -> None:
    paths = _paths(work)
    inp, out = work / "in", work / "out" / "inner"
    shutil.copytree(paths.raw / "imagesTs", inp)
    for c in range(4):
        shutil.move(inp / f"case_005_{c:04d}.nii.gz", inp / f".._{c:04d}.nii.gz")
    code, lines = run(predict_main, ["-i", inp, "-o", out, "--home", work / "home", *PREDICT_ARGS], capsys)
    assert code == 2 and any("unsafe case id '..'" in ln for ln in lines), lines
    assert [p.name for p in (work / "out").iterdir()] in ([], ["inner"])
    assert not (work / "out" / "..nii.gz").exists() and not (work / "out" / "...nii.gz").exists()
    record("case id `..`", "autoseg-predict", code, lines, "nothing written outside -o", work)


# ---------------------------------------------------------------- autoseg-evaluate

def test_evaluate_reports_missing_and_mismatched_predictions(work: Path, capsys) -> None:
    paths = _paths(work)
    pred, ref = work / "pred", paths.raw / "labelsTs"
    before = snapshot(pred, ref)
    _quiet(evaluate_main, ["-p", pred, "-r", ref, "--home", work / "home", "-o", work / "ev"])
    (pred / "case_005.nii.gz").unlink()            # a missing prediction
    before.pop(str(pred / "case_005.nii.gz"))
    code, lines = run(evaluate_main, ["-p", pred, "-r", ref, "--home", work / "home", "-o", work / "ev2"], capsys)
    assert code == 2 and any(ln.startswith("failed: ") and str(ref / "case_005.nii.gz") in ln and "; " in ln
                             for ln in lines), lines
    record("missing prediction file", "autoseg-evaluate", code, [ln for ln in lines if ln.startswith("failed")],
           "predictions, references", work)
    shutil.copy(work / "pred" / "case_004.nii.gz", pred / "case_005.nii.gz")
    _shape(pred / "case_005.nii.gz")               # a prediction on another grid
    code, lines = run(evaluate_main, ["-p", pred, "-r", ref, "--home", work / "home", "-o", work / "ev"], capsys)
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert code == 2 and len(failed) == 1 and str(pred / "case_005.nii.gz") in failed[0] and "; " in failed[0], lines
    record("prediction with another shape", "autoseg-evaluate", code, failed, "predictions, references", work)
    before.pop(str(pred / "case_005.nii.gz"), None)
    assert all(snapshot(pred, ref).get(k) == v for k, v in before.items())


def test_evaluate_missing_folder_and_bad_dataset_json(work: Path, capsys) -> None:
    code, lines = run(evaluate_main, ["-p", work / "nothing", "-r", _paths(work).raw / "labelsTs",
                                      "--home", work / "home"], capsys)
    expect_one_line(code, lines, work / "nothing", "autoseg-evaluate")
    record("prediction folder missing", "autoseg-evaluate", code, lines, "-", work)
    bad = work / "ds.json"
    bad.write_text("{\"labels\": ")
    code, lines = run(evaluate_main, ["-p", work / "pred", "-r", _paths(work).raw / "labelsTs",
                                      "--dataset-json", bad], capsys)
    expect_one_line(code, lines, bad, "autoseg-evaluate")
    record("--dataset-json malformed", "autoseg-evaluate", code, lines, "predictions", work)


# ---------------------------------------------------------------- autoseg-convert

def _brats_src(work: Path) -> Path:
    src = work / "brats"
    write_brats_folders(src, n=2, shape=SHAPE)
    return src


def test_convert_reports_missing_channel_duplicate_id_and_keeps_the_existing_dataset(work: Path, capsys) -> None:
    src = _brats_src(work)
    home = work / "chome"
    _quiet(convert_main, ["brats", src, "-d", "7", "--home", home, "-np", "1"])
    raw = home / "raw" / "Dataset007_BraTS"
    before = snapshot(raw)
    more = work / "more"
    write_brats_folders(more, n=2, shape=SHAPE, first_index=2)
    missing = next(more.glob("*/*_flair.nii.gz"))
    missing.unlink()
    code, lines = run(convert_main, ["brats", more, "-d", "7", "--home", home, "-np", "1"], capsys)
    assert code == 2 and any(str(missing) in ln and "channel file missing" in ln for ln in lines), lines
    assert snapshot(raw) == before
    record("BraTS case folder missing a channel", "autoseg-convert", code, lines, "the converted dataset", work)
    dup = work / "dup"
    (dup / "a").mkdir(parents=True)
    (dup / "b").mkdir()
    shutil.copytree(next(src.iterdir()), dup / "a" / next(src.iterdir()).name)
    shutil.copytree(next(src.iterdir()), dup / "b" / next(src.iterdir()).name)
    code, lines = run(convert_main, ["brats", dup, "-d", "7", "--home", home, "-np", "1"], capsys)
    assert code == 2 and any("occurs more than once" in ln for ln in lines), lines
    assert snapshot(raw) == before
    record("duplicate BraTS case id", "autoseg-convert", code, lines, "the converted dataset", work)


# ---------------------------------------------------------------- unwritable output and a full disk

def test_unwritable_output_folders_are_one_line(work: Path, capsys) -> None:
    blocker = work / "a_file"
    blocker.write_text("not a folder")
    inp = _paths(work).raw / "imagesTs"
    cases = [
        ("autoseg-predict", predict_main, ["-i", inp, "-o", blocker / "out", "--home", work / "home", *PREDICT_ARGS]),
        ("autoseg-evaluate", evaluate_main, ["-p", work / "pred", "-r", _paths(work).raw / "labelsTs",
                                             "--home", work / "home", "-o", blocker / "ev"]),
        ("autoseg-convert", convert_main, ["brats", _brats_src(work), "-d", "8", "--home", blocker / "h", "-np", "1"]),
        ("autoseg-preprocess", preprocess_main, ["--home", work / "home", "-np", "1", "-c", "2d"]),
        ("autoseg-train", train_main, ["3d_fullres", "fold0", "--home", work / "home", *TRAIN_ARGS]),
        ("autoseg-plan", plan_main, ["--home", work / "home", *PLAN_ARGS]),
    ]
    (_paths(work).preprocessed / "2d").write_text("")          # preprocess -c 2d: its folder is a file
    for prog, main, argv in cases:
        where = blocker
        if prog == "autoseg-preprocess":
            where = _paths(work).preprocessed / "2d"
        elif prog == "autoseg-train":      # results/DatasetX is a file: the fold folder cannot be made
            shutil.rmtree(_paths(work).results)
            _paths(work).results.write_text("")
            where = _paths(work).results
        elif prog == "autoseg-plan":     # the fingerprint must be written again, into a folder that is a file
            shutil.rmtree(_paths(work).preprocessed)
            _paths(work).preprocessed.write_text("")
            where = _paths(work).preprocessed
        code, lines = run(main, argv, capsys)
        expect_one_line(code, lines, where, prog)
        assert blocker.read_text() == "not a folder"
        record("output folder cannot be created (its parent is a file)", prog, code, lines, "everything", work)


@pytest.fixture
def enospc():
    def raise_enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return raise_enospc


def test_full_disk_while_planning_keeps_the_old_plan(work: Path, capsys, monkeypatch, enospc) -> None:
    paths = _paths(work)
    paths.fingerprint_json.unlink()       # computed again, then cannot be written
    before = snapshot(paths.preprocessed)
    monkeypatch.setattr(os, "fsync", enospc)
    code, lines = run(plan_main, ["--home", work / "home", *PLAN_ARGS], capsys)
    monkeypatch.undo()
    line = expect_one_line(code, lines, paths.preprocessed, "autoseg-plan")
    assert "no space left" in line.lower()
    assert snapshot(paths.preprocessed) == before and not list(paths.preprocessed.glob(".*tmp*"))
    record("disk full (ENOSPC) while writing", "autoseg-plan", code, lines, "plans.json; no temporary file left", work)


def test_full_disk_while_preprocessing_keeps_finished_cases(work: Path, capsys, monkeypatch, enospc) -> None:
    paths = _paths(work)
    out = paths.config_dir("3d_fullres")
    for p in out.glob("case_002*"):
        p.unlink()
    before = snapshot(paths.preprocessed)
    monkeypatch.setattr(np, "save", enospc)
    code, lines = run(preprocess_main, ["--home", work / "home", "-np", "1"], capsys)
    monkeypatch.undo()
    line = expect_one_line(code, lines, out / "case_002", "autoseg-preprocess")
    assert "no space left" in line.lower()
    assert snapshot(paths.preprocessed) == before and not list(out.glob(".*tmp*"))
    record("disk full (ENOSPC) while writing", "autoseg-preprocess", code, lines,
           "finished cases; no temporary file left", work)


@pytest.mark.slow
def test_full_disk_while_predicting_keeps_earlier_predictions(work: Path, capsys, monkeypatch, enospc) -> None:
    paths = _paths(work)
    out = work / "pred"
    (out / "case_005.nii.gz").unlink()
    before = snapshot(out)
    monkeypatch.setattr(sitk, "WriteImage", enospc)
    code, lines = run(predict_main, ["-i", paths.raw / "imagesTs", "-o", out, "--home", work / "home", *PREDICT_ARGS],
                      capsys)
    monkeypatch.undo()
    assert code == 2, lines
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert len(failed) == 1 and str(out / "case_005.nii.gz") in failed[0] and "no space left" in failed[0].lower(), lines
    del before[str(out / "provenance" / "case_005.json")]   # (the record of the deleted output goes with it)
    assert snapshot(out) == before and not list(out.glob(".*tmp*"))
    record("disk full (ENOSPC) while writing", "autoseg-predict", code, lines,
           "earlier predictions; no temporary file left", work)


# ---------------------------------------------------------------- checkpoints: other plan, edited metadata, code inside

class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a booby-trapped checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _trap(path: Path, marker: Path) -> None:
    """Rewrite a real checkpoint with a code-running object inside (plain torch.save, full pickle)."""
    ckpt = torch.load(path, weights_only=True)
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, path)


def _edit_metadata(path: Path) -> None:
    ckpt = torch.load(path, weights_only=True)
    ckpt["configuration"]["patch_size"] = [8, 8, 8]
    torch.save(ckpt, path)


def test_predict_refuses_unsafe_edited_and_other_plan_checkpoints(work: Path, capsys) -> None:
    paths = _paths(work)
    ckpt = paths.fold_dir("3d_fullres", 0) / "checkpoint_final.pt"
    original = ckpt.read_bytes()
    marker = work / "PWNED"
    argv = ["-i", paths.raw / "imagesTs", "-o", work / "out", "--home", work / "home", *PREDICT_ARGS]

    _trap(ckpt, marker)
    code, lines = run(predict_main, argv, capsys)
    line = expect_one_line(code, lines, ckpt, "autoseg-predict")
    assert "refused" in line and not marker.exists()
    record("checkpoint with a pickled code payload (__reduce__)", "autoseg-predict", code, lines,
           "the payload never runs; no output", work)

    ckpt.write_bytes(original)
    _edit_metadata(ckpt)
    code, lines = run(predict_main, argv, capsys)
    expect_one_line(code, lines, ckpt, "autoseg-predict")
    record("checkpoint whose metadata was edited", "autoseg-predict", code, lines, "no output", work)

    ckpt.write_bytes(original[: len(original) // 2])
    code, lines = run(predict_main, argv, capsys)
    line = expect_one_line(code, lines, ckpt, "autoseg-predict")
    assert "truncated or corrupt" in line
    record("truncated checkpoint", "autoseg-predict", code, lines, "no output", work)

    ckpt.write_bytes(original)     # a valid checkpoint, but plans.json has changed since it was trained
    plans = json.loads(paths.plans_json.read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 16, 16]
    paths.plans_json.write_text(json.dumps(plans))
    code, lines = run(predict_main, argv, capsys)
    line = expect_one_line(code, lines, ckpt, "autoseg-predict")
    assert "another plan" in line
    record("checkpoint trained with another plan (plans.json changed)", "autoseg-predict", code, lines, "no output", work)
    assert not (work / "out").exists() or not list((work / "out").iterdir())


def test_error_ends_a_progress_bar(work: Path, capsys, monkeypatch) -> None:
    """An error in the middle of a progress bar still prints as a line of its own (run_cli closes open bars)."""
    from autoseg.inference.predictor import Predictor

    def boom(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(Predictor, "predict", boom)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        predict_main([str(a) for a in ["-i", _paths(work).raw / "imagesTs", "-o", work / "out",
                                       "--home", work / "home", *PREDICT_ARGS]])
    assert e.value.code == 1
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert last.startswith("autoseg-predict: internal error: RuntimeError: boom") and "\r" not in last, repr(last)


TRAIN_ARGS = ["--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "0", "--workers", "0", "--device", "cpu",
              "--no-validation"]


def test_train_refuses_unsafe_and_other_plan_checkpoints(work: Path, capsys) -> None:
    paths = _paths(work)
    fold_dir = paths.fold_dir("3d_fullres", 1)
    marker = work / "PWNED"
    argv = ["3d_fullres", "fold1", "--home", work / "home", *TRAIN_ARGS]

    latest = fold_checkpoint(paths, 1, name="checkpoint_latest.pt")
    _trap(latest, marker)
    before = snapshot(fold_dir)
    code, lines = run(train_main, [*argv, "--resume"], capsys)
    line = expect_one_line(code, lines, latest, "autoseg-train")
    assert "refused" in line and not marker.exists() and snapshot(fold_dir) == before
    record("checkpoint with a pickled code payload (__reduce__)", "autoseg-train --resume", code, lines,
           "the payload never runs; fold folder unchanged", work)

    pretrained = work / "pretrained.pt"
    shutil.copy(paths.fold_dir("3d_fullres", 0) / "checkpoint_final.pt", pretrained)
    _trap(pretrained, marker)
    shutil.rmtree(fold_dir)
    code, lines = run(train_main, [*argv, "--pretrained", pretrained], capsys)
    line = expect_one_line(code, lines, pretrained, "autoseg-train")
    assert "refused" in line and not marker.exists()
    assert not (fold_dir / "checkpoint_latest.pt").exists()
    record("checkpoint with a pickled code payload (__reduce__)", "autoseg-train --pretrained", code, lines,
           "the payload never runs; nothing trained", work)

    other = asdict(Plans.load(paths.plans_json).configuration("3d_fullres"))
    other["patch_size"] = [16, 16, 16]                     # trained with an earlier plans.json
    latest = fold_checkpoint(paths, 1, configuration=other, name="checkpoint_latest.pt")
    before = snapshot(fold_dir)
    code, lines = run(train_main, [*argv, "--resume"], capsys)
    line = expect_one_line(code, lines, latest, "autoseg-train")
    assert "another plan" in line and snapshot(fold_dir) == before
    record("checkpoint trained with another plan (plans.json changed)", "autoseg-train --resume", code, lines,
           "fold folder unchanged", work)

    shutil.copy(paths.fold_dir("3d_fullres", 0) / "checkpoint_final.pt", latest)
    _edit_metadata(latest)
    before = snapshot(fold_dir)
    code, lines = run(train_main, [*argv, "--resume"], capsys)
    line = expect_one_line(code, lines, latest, "autoseg-train")
    assert "modified" in line and snapshot(fold_dir) == before
    record("checkpoint whose metadata was edited", "autoseg-train --resume", code, lines, "fold folder unchanged", work)


def test_full_disk_while_evaluating_and_converting_keeps_earlier_files(work: Path, capsys, monkeypatch, enospc) -> None:
    paths = _paths(work)
    args = ["-p", work / "pred", "-r", paths.raw / "labelsTs", "--home", work / "home", "-o", work / "ev"]
    _quiet(evaluate_main, args)
    before = snapshot(work / "ev", work / "pred")
    monkeypatch.setattr(os, "fsync", enospc)
    code, lines = run(evaluate_main, args, capsys)
    monkeypatch.undo()
    line = expect_one_line(code, lines, work / "ev" / "summary.json", "autoseg-evaluate")
    assert "no space left" in line.lower() and snapshot(work / "ev", work / "pred") == before
    record("disk full (ENOSPC) while writing", "autoseg-evaluate", code, lines,
           "the earlier summary.json and metrics.csv", work)

    src, home = _brats_src(work), work / "chome"
    _quiet(convert_main, ["brats", src, "-d", "7", "--home", home, "-np", "1"])
    raw = home / "raw" / "Dataset007_BraTS"
    before = snapshot(raw)
    write_brats_folders(src, n=1, shape=SHAPE, first_index=2)   # a new case arrives
    monkeypatch.setattr(shutil, "copyfile", enospc)
    code, lines = run(convert_main, ["brats", src, "-d", "7", "--home", home, "-np", "1"], capsys)
    monkeypatch.undo()
    line = expect_one_line(code, lines, raw, "autoseg-convert")
    assert "no space left" in line.lower() and snapshot(raw) == before and not temporaries_in(raw)
    record("disk full (ENOSPC) while writing", "autoseg-convert", code, lines, "the converted cases and dataset.json",
           work)


def temporaries_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def test_convert_copies_bytes_and_plan_reports_the_damaged_file(work: Path, capsys) -> None:
    """autoseg-convert copies files byte for byte without reading voxels; the integrity check that follows
    (autoseg-plan, or autoseg-plan --verify) names the damaged file in its converted place."""
    src = _brats_src(work)
    t1 = next(next(src.iterdir()).glob("*_t1.nii.gz"))
    _truncated(t1)
    home = work / "chome"
    code, lines = run(convert_main, ["brats", src, "-d", "7", "--home", home, "-np", "1"], capsys)
    assert code == 0
    code, lines = run(plan_main, ["--home", home, "-d", "7", "--verify", "-np", "1"], capsys)
    raw = home / "raw" / "Dataset007_BraTS"
    assert code == 2 and any(ln.startswith(str(raw / "imagesTr")) and "_0000.nii.gz" in ln for ln in lines), lines
    record("truncated .nii.gz in a BraTS folder (copied as is)", "autoseg-convert, then autoseg-plan --verify", code,
           lines, "the source folder", work)


@pytest.mark.slow
def test_predict_all_zero_channel(work: Path, capsys) -> None:
    paths = _paths(work)
    inp, out = work / "in", work / "out"
    shutil.copytree(paths.raw / "imagesTs", inp)
    _zero(inp / "case_005_0001.nii.gz")
    code, lines = run(predict_main, ["-i", inp, "-o", out, "--home", work / "home", *PREDICT_ARGS], capsys)
    assert code == 2 and len(lines) == 2, lines
    assert lines[0].startswith("failed: case_005: ") and str(inp / "case_005_0001.nii.gz") in lines[0], lines
    assert sorted(p.name for p in out.iterdir()) == ["case_004.nii.gz", "provenance"]
    record("all-zero image", "autoseg-predict", code, lines, "the other cases are written", work)


def test_malformed_plans_json_is_one_line_and_plan_rewrites_it(work: Path, capsys) -> None:
    paths = _paths(work)
    paths.plans_json.write_text('{"dataset_name": "Dataset001_Synthetic", "configurations": {')
    before = snapshot(paths.preprocessed, paths.results)
    for prog, main, argv in (
            ("autoseg-preprocess", preprocess_main, ["--home", work / "home", "-np", "1"]),
            ("autoseg-train", train_main, ["3d_fullres", "fold1", "--home", work / "home", *TRAIN_ARGS]),
            ("autoseg-predict", predict_main, ["-i", paths.raw / "imagesTs", "-o", work / "out", "--home", work / "home",
                                               *PREDICT_ARGS])):
        code, lines = run(main, argv, capsys)
        line = expect_one_line(code, lines, paths.plans_json, prog)
        assert "malformed JSON" in line and snapshot(paths.preprocessed, paths.results) == before
        record("plans.json malformed", prog, code, lines, "preprocessed cases, checkpoints", work)
    code, lines = run(plan_main, ["--home", work / "home", *PLAN_ARGS], capsys)
    assert code == 0, lines
    assert Plans.load(paths.plans_json).configuration("3d_fullres")   # autoseg-plan simply writes a good one again


def test_evaluate_reports_damaged_predictions_and_scores_the_others(work: Path, capsys) -> None:
    paths = _paths(work)
    pred = work / "pred"
    _truncated(pred / "case_004.nii.gz")
    ref = paths.raw / "labelsTs"
    code, lines = run(evaluate_main, ["-p", pred, "-r", ref, "--home", work / "home", "-o", work / "ev"], capsys)
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert code == 2 and len(failed) == 1 and str(pred / "case_004.nii.gz") in failed[0] and "; " in failed[0], lines
    assert any("1 case(s) evaluated" in ln for ln in lines), lines
    record("truncated prediction file", "autoseg-evaluate", code, failed, "predictions, references", work)
    _rewrite(pred / "case_005.nii.gz", lambda a, g: (np.full_like(a, 7), g))   # 7 is no label of the dataset
    code, lines = run(evaluate_main, ["-p", pred, "-r", ref, "--home", work / "home", "-o", work / "ev"], capsys)
    failed = [ln for ln in lines if ln.startswith("failed: ") and "case_005" in ln]
    assert code == 2 and len(failed) == 1 and str(pred / "case_005.nii.gz") in failed[0] and "[7]" in failed[0], lines
    record("prediction with label values not in dataset.json", "autoseg-evaluate", code, failed,
           "predictions, references", work)


def test_train_names_a_damaged_preprocessed_case(work: Path, base: Path, capsys) -> None:
    """Preprocessed files damaged after they were written (a partial copy, a bad disk): one line, not a crash."""
    out = _paths(work).config_dir("3d_fullres")
    argv = ["3d_fullres", "fold1", "--home", work / "home", *TRAIN_ARGS]
    for what, damage, pattern in (("preprocessed array truncated", _truncated, "*_data.npy"),
                                  ("preprocessed label array deleted", _missing, "*_seg.npy")):
        shutil.rmtree(out)
        shutil.copytree(_paths(base).config_dir("3d_fullres"), out)
        for p in out.glob(pattern):     # every case, so whichever the loader draws first is damaged
            damage(p)
        code, lines = run(train_main, argv, capsys)
        line = expect_one_line(code, lines, out, "autoseg-train")
        assert re.search(r"case_\d{3}_(data|seg)\.npy: ", line) and ".json next to it" in line, line
        record(what, "autoseg-train", code, lines, "raw data; deleting the case's marker and rerunning "
               "autoseg-preprocess redoes it", work)
        for p in out.glob("case_*.json"):   # the fix the message gives
            p.unlink()
        _quiet(preprocess_main, ["--home", work / "home", "-np", "1"])
        for p in _paths(base).config_dir("3d_fullres").iterdir():
            assert (out / p.name).read_bytes() == p.read_bytes(), p.name


@pytest.mark.slow
def test_ensemble_refuses_pickled_and_truncated_probabilities(work: Path, capsys) -> None:
    from autoseg.cli.ensemble import main as ensemble_main
    paths = _paths(work)
    a, b = work / "a", work / "b"
    _quiet(predict_main, ["-i", paths.raw / "imagesTs", "-o", a, "--home", work / "home", *PREDICT_ARGS,
                          "--save-probabilities"])
    shutil.copytree(a, b)
    marker = work / "PWNED"
    with np.load(b / "case_004.npz") as z:
        arrays = dict(z)
    arrays["probabilities"] = np.array([_Payload(marker)], dtype=object)
    np.savez(b / "case_004.npz", **arrays)        # unpickling it would run the payload
    _truncated(b / "case_005.npz")
    before = snapshot(a, b)
    code, lines = run(ensemble_main, ["-i", a, b, "-o", work / "ens"], capsys)
    assert not marker.exists() and snapshot(a, b) == before
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert code == 2 and len(failed) == 2, lines
    assert str(b / "case_004.npz") in failed[0] and "refused" in failed[0] and str(b / "case_005.npz") in failed[1], lines
    record("probabilities .npz holding a pickled object / truncated", "autoseg-ensemble", code, lines,
           "the payload never runs; the input folders", work)


def test_bad_splits_and_postprocessing_json_are_one_line(work: Path, capsys) -> None:
    paths = _paths(work)
    train = ["3d_fullres", "fold0", "--home", work / "home", *TRAIN_ARGS]
    for what, text in (("splits.json of the wrong form", '[{"train": 5}]'),
                       ("splits.json naming an unknown case", '[{"train": ["case_000", "nope"], "val": ["case_001"]}]')):
        paths.splits_json.write_text(text)
        code, lines = run(train_main, train, capsys)
        expect_one_line(code, lines, paths.splits_json, "autoseg-train")
        assert paths.splits_json.read_text() == text and not paths.fold_dir("3d_fullres", 0).joinpath(
            "checkpoint_latest.pt").exists()
        record(what, "autoseg-train", code, lines, "splits.json as it was; nothing trained", work)
    bad = work / "post.json"
    bad.write_text('{"largest_component": ')
    code, lines = run(predict_main, ["-i", paths.raw / "imagesTs", "-o", work / "out", "--home", work / "home",
                                     *PREDICT_ARGS, "--postprocess", bad], capsys)
    expect_one_line(code, lines, bad, "autoseg-predict")
    assert not (work / "out").exists()
    record("--postprocess JSON malformed", "autoseg-predict", code, lines, "no output written", work)


# ---------------------------------------------------------------- bad numbers: refused while parsing, one line

BAD_NUMBERS = [   # (command, its main's module, arguments, the option named in the message)
    ("autoseg-train", "train", ["3d_fullres", "fold0", "--lr", "-1"], "--lr"),
    ("autoseg-train", "train", ["3d_fullres", "fold0", "--lr", "nan"], "--lr"),
    ("autoseg-train", "train", ["3d_fullres", "fold0", "--epochs", "0"], "--epochs"),
    ("autoseg-train", "train", ["3d_fullres", "fold0", "--iters-per-epoch", "-2"], "--iters-per-epoch"),
    ("autoseg-train", "train", ["3d_fullres", "fold0", "--val-iters", "-3"], "--val-iters"),
    ("autoseg-train", "train", ["3d_fullres", "fold0", "--workers", "-1"], "--workers"),
    ("autoseg-train", "train", ["3d_fullres", "fold0", "--seed", "-1"], "--seed"),
    ("autoseg-predict", "predict", ["--threads", "-1"], "--threads"),
    ("autoseg-predict", "predict", ["--threads", "0"], "--threads"),
    ("autoseg-predict", "predict", ["--batch-size", "0"], "--batch-size"),
    ("autoseg-predict", "predict", ["--batch-size", "-3"], "--batch-size"),
    ("autoseg-predict", "predict", ["--step", "0"], "--step"),
    ("autoseg-predict", "predict", ["--step", "1.5"], "--step"),
    ("autoseg-predict", "predict", ["--shard", "2/2"], "--shard"),
    ("autoseg-predict", "predict", ["-f", "x"], "-f"),
    ("autoseg-preprocess", "preprocess", ["-np", "0"], "-np"),
    ("autoseg-preprocess", "preprocess", ["--shard", "1/0"], "--shard"),
    ("autoseg-plan", "plan", ["--vram", "0"], "--vram"),
    ("autoseg-plan", "plan", ["--spacing", "-1"], "--spacing"),
    ("autoseg-plan", "plan", ["--base-features", "0"], "--base-features"),
    ("autoseg-plan", "plan", ["-np", "-1"], "-np"),
    ("autoseg-convert brats", "convert", ["brats", "SRC", "-d", "1000"], "-d"),
    ("autoseg-convert brats", "convert", ["brats", "SRC", "-d", "1", "-np", "0"], "-np"),
    ("autoseg-demo", "demo", ["--epochs", "0"], "--epochs"),
    ("autoseg-demo", "demo", ["--threads", "0"], "--threads"),
    ("autoseg-demo", "demo", ["-np", "0"], "-np"),
    ("autoseg-evaluate", "evaluate", ["-np", "0"], "-np"),
    ("autoseg-evaluate", "evaluate", ["-np", "-1"], "-np"),
    ("autoseg-evaluate", "evaluate", ["--nsd-tolerance", "-1"], "--nsd-tolerance"),
    ("autoseg-evaluate", "evaluate", ["--nsd-tolerance", "nan"], "--nsd-tolerance"),
    ("autoseg-evaluate", "evaluate", ["--lesion-dilation", "-1"], "--lesion-dilation"),
    ("autoseg-evaluate", "evaluate", ["--lesion-dilation", "1.5"], "--lesion-dilation"),
    ("autoseg-evaluate", "evaluate", ["--lesion-min-volume", "-5"], "--lesion-min-volume"),
]


@pytest.mark.parametrize("prog,module,args,option", BAD_NUMBERS, ids=[" ".join(c[2][-2:]) + f" ({c[1]})"
                                                                       for c in BAD_NUMBERS])
def test_bad_numbers_are_refused_while_parsing(tmp_path: Path, capsys, prog: str, module: str, args: list[str],
                                               option: str) -> None:
    """An out-of-range number is one line naming the option with a valid example, exit 2, before any work
    (it used to be an internal error (--lr -1, --threads -1) or silently accepted (--batch-size 0)). The data
    root does not exist: the parser must answer before anything looks for it."""
    import importlib
    main = importlib.import_module(f"autoseg.cli.{module}").main
    io_args = {"predict": ["-i", tmp_path / "in", "-o", tmp_path / "out"], "demo": ["--out", tmp_path / "demo"],
               "evaluate": ["-p", tmp_path / "pred", "-r", tmp_path / "ref"]}
    args = [str(tmp_path / "src") if a == "SRC" else a for a in args]
    code, lines = run(main, [*args, *io_args.get(module, []), "--home", tmp_path / "home"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: argument {option}") and f"; e.g. {option} " in lines[0], lines
    assert not list(tmp_path.iterdir())   # nothing written
    record(f"{option} {args[-1]}", prog, code, lines, "everything (nothing is done)", tmp_path)


# ---------------------------------------------------------------- messages that pointed the wrong way (issue 16, item 11)

def test_label_values_written_as_strings_are_named_as_such(work: Path, capsys) -> None:
    """"1" instead of 1 in dataset.json: the message says so (it used to ask for a background entry that was there)."""
    paths = _paths(work)
    d = json.loads(paths.dataset_json.read_text())
    d["labels"] = {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in d["labels"].items()}
    paths.dataset_json.write_text(json.dumps(d))
    before = snapshot(paths.preprocessed)
    code, lines = run(plan_main, ["--home", work / "home", *PLAN_ARGS], capsys)
    line = expect_one_line(code, lines, paths.dataset_json, "autoseg-plan")
    assert "written as strings" in line and '"0"' in line and "background" not in line.split(";")[0], line
    assert snapshot(paths.preprocessed) == before
    record("label values written as strings (\"1\" for 1)", "autoseg-plan", code, lines, "plans.json, preprocessed/",
           work)


LITTER = {".DS_Store": b"Bud1", "Thumbs.db": b"\xd0\xcf", "desktop.ini": b"[.ShellClassInfo]"}


def _litter(folder: Path, images: list[str]) -> None:
    """What macOS and Windows leave in a folder: .DS_Store, Thumbs.db, desktop.ini, an AppleDouble ._NAME per image
    (named like the image it describes, but 4 KB of metadata) and a __MACOSX folder (zip archives)."""
    for name, data in LITTER.items():
        (folder / name).write_bytes(data)
    for name in images:
        (folder / f"._{name}").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
    (folder / "__MACOSX").mkdir()
    for name in images:
        (folder / "__MACOSX" / f"._{name}").write_bytes(bytes(4096))


@pytest.mark.slow
def test_files_other_systems_leave_beside_images_are_ignored(work: Path, capsys) -> None:
    """Stray .DS_Store, ._CASE_0000.nii.gz, Thumbs.db, desktop.ini, __MACOSX are not data: no error anywhere
    (a ._ file used to be an 'unsafe case id' with exit 2)."""
    paths = _paths(work)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        _litter(paths.raw / sub, sorted(p.name for p in (paths.raw / sub).glob("*.nii.gz")))
    for p in paths.config_dir("3d_fullres").glob("case_002*"):   # so that preprocessing reads the raw folders
        p.unlink()
    code, lines = run(plan_main, ["--home", work / "home", *PLAN_ARGS], capsys)
    assert code == 0, lines
    code, lines = run(preprocess_main, ["--home", work / "home", "-np", "1"], capsys)
    assert code == 0 and "1 case(s) preprocessed" in lines[-1], lines
    code, lines = run(predict_main, ["-i", paths.raw / "imagesTs", "-o", work / "out", "--home", work / "home",
                                     *PREDICT_ARGS], capsys)
    assert code == 0 and lines[-1].startswith("2 written, 0 already done, 0 failed"), lines
    assert sorted(p.name for p in (work / "out").iterdir()) == ["case_004.nii.gz", "case_005.nii.gz", "provenance"]
    record(".DS_Store, Thumbs.db, desktop.ini, ._CASE_0000.nii.gz, __MACOSX/ beside the images", "autoseg-predict",
           code, lines, "(ignored; the 2 cases are predicted)", work)
    src = _brats_src(work)
    for case in src.iterdir():
        _litter(case, sorted(p.name for p in case.iterdir()))
    _litter(src, [])
    code, lines = run(convert_main, ["brats", src, "-d", "7", "--home", work / "chome", "-np", "1"], capsys)
    assert code == 0, lines
    assert len(list((work / "chome" / "raw" / "Dataset007_BraTS" / "imagesTr").iterdir())) == 2 * 4


def _rename_case(folder: Path, old: str, new: str) -> None:
    for p in folder.glob(f"{old}_*.nii.gz"):
        p.rename(folder / p.name.replace(old, new, 1))


@pytest.mark.slow
def test_a_case_id_too_long_for_a_temporary_name_is_predicted(work: Path, capsys) -> None:
    """A case id whose output name fits the file system but whose temporary name (about 25 characters longer)
    did not: it used to stop the whole prediction with a message about permissions and free disk space."""
    paths = _paths(work)
    inp, out = work / "in", work / "out"
    shutil.copytree(paths.raw / "imagesTs", inp)
    long_id = "case_005_" + "x" * (240 - len("case_005_"))          # CASE_0000.nii.gz has 252 characters
    _rename_case(inp, "case_005", long_id)
    code, lines = run(predict_main, ["-i", inp, "-o", out, "--home", work / "home", *PREDICT_ARGS], capsys)
    assert code == 0 and lines[-1].startswith("2 written, 0 already done, 0 failed"), lines
    assert (out / f"{long_id}.nii.gz").is_file() and not [p for p in out.iterdir() if p.name.startswith(".")]
    record("case id of 240 characters: its output name fits, a temporary name 25 longer does not", "autoseg-predict",
           code, lines, "(predicted; no temporary left)", work)


@pytest.mark.slow
def test_a_path_too_long_for_the_file_system_fails_that_case_only(work: Path, capsys) -> None:
    """An output path over the system's limit (PATH_MAX) for one case: that case fails with a line that says so
    and names it, the others are predicted (it used to stop everything, blaming permissions and disk space)."""
    paths = _paths(work)
    inp = work / "in"
    shutil.copytree(paths.raw / "imagesTs", inp)
    long_id = "case_005_" + "y" * 190
    _rename_case(inp, "case_005", long_id)
    out = work
    while len(str(out)) < 3950:                         # a deep -o: case_004 fits in it, the long id does not
        out = out / ("d" * min(200, 3950 - len(str(out)) - 1))
    code, lines = run(predict_main, ["-i", inp, "-o", out, "--home", work / "home", *PREDICT_ARGS], capsys)
    shown = [ln.replace(str(out), "…/OUT").replace(long_id, "case_005_yyy…y") for ln in lines]
    assert code == 2 and len(lines) == 2, shown
    assert shown[0].startswith("failed: case_005_yyy…y: …/OUT/case_005_yyy…y.nii.gz: path too long for the file "
                               "system"), shown
    assert shown[1].startswith("1 written, 0 already done, 1 failed"), shown
    assert sorted(p.name for p in out.iterdir()) == ["case_004.nii.gz", "provenance"]
    record("output path longer than the file system allows (one case of two)", "autoseg-predict", code, shown,
           "the other case is written", work)


# ---------------------------------------------------------------- a checkpoint from another dataset or fold (item 6)

def _copy_dataset(work: Path, new: str) -> DatasetPaths:
    """The dataset under another name (its plan is the same), with the results folder of the first one."""
    old, home = _paths(work), work / "home"
    for part in ("raw", "preprocessed", "results"):
        if (home / part / DS).is_dir():
            shutil.copytree(home / part / DS, home / part / new)
    return DatasetPaths(home, new)


@pytest.mark.slow
def test_a_checkpoint_of_another_dataset_or_fold_is_refused(work: Path, capsys) -> None:
    """A fold folder copied from another dataset with the same plan (or into another fold's folder) is refused
    by autoseg-predict and autoseg-train --resume; it used to be used silently."""
    paths = _paths(work)
    home = work / "home"
    _quiet(train_main, ["3d_fullres", "fold1", "--home", home, *TRAIN_ARGS, "--epochs", "2"])
    other = _copy_dataset(work, "Dataset002_Other")
    latest = other.fold_dir("3d_fullres", 1) / "checkpoint_latest.pt"
    before = snapshot(other.results)
    code, lines = run(predict_main, ["-i", paths.raw / "imagesTs", "-o", work / "out", "--home", home, "-d", "2",
                                     *PREDICT_ARGS[2:], "-f", "1"], capsys)
    final = other.fold_dir("3d_fullres", 1) / "checkpoint_final.pt"
    line = expect_one_line(code, lines, final, "autoseg-predict")
    assert f"trained on dataset {DS}, not on Dataset002_Other" in line, line
    record("checkpoint of another dataset (results folder copied, same plan)", "autoseg-predict", code, lines,
           "no output", work)
    code, lines = run(train_main, ["3d_fullres", "fold1", "--home", home, "-d", "2", *TRAIN_ARGS, "--epochs", "3",
                                   "--resume"], capsys)
    line = expect_one_line(code, lines, latest, "autoseg-train")
    assert f"trained on dataset {DS}" in line and snapshot(other.results) == before, line
    record("checkpoint of another dataset (results folder copied, same plan)", "autoseg-train --resume", code, lines,
           "fold folder unchanged", work)
    assert not (work / "out").exists() or not list((work / "out").iterdir())

    shutil.copytree(paths.fold_dir("3d_fullres", 1), paths.fold_dir("3d_fullres", 2))   # fold 1 copied as fold 2
    code, lines = run(predict_main, ["-i", paths.raw / "imagesTs", "-o", work / "out", "--home", home, "-d", "1",
                                     *PREDICT_ARGS[2:], "-f", "1", "2"], capsys)
    line = expect_one_line(code, lines, paths.fold_dir("3d_fullres", 2) / "checkpoint_final.pt", "autoseg-predict")
    assert "trained as fold 1, but lies in the folder of fold 2" in line, line
    record("checkpoint of another fold (fold_1 copied to fold_2)", "autoseg-predict", code, lines, "no output", work)


# ---------------------------------------------------------------- an outlier case (item 4)

def _respace(raw: Path, case: int, spacing: tuple[float, float, float]) -> None:
    for p in [*raw.glob(f"imagesTr/case_{case:03d}_*.nii.gz"), _lab(raw, case)]:
        _rewrite(p, lambda a, g: (a, Geometry(g.size, spacing, g.origin, g.direction)))


def test_plan_warns_about_an_outlier_case_and_preprocess_names_it_and_finishes_the_others(
        work: Path, capsys, monkeypatch) -> None:
    """A case with 100 mm spacing among 1 mm ones: autoseg-plan warns (exit 0); autoseg-preprocess refuses that
    case before allocating (2400 x 3200 x 3200 voxels at 1 mm), writes the others, exits 2 naming it. It used to
    end in "out of memory; use fewer workers (-np 1)" with -np 1 given, no case named and the good cases lost."""
    import autoseg.preprocessing.case as case_module
    limit = min(case_module.memory_limit(), 64 * 2 ** 30)   # (on a machine with more, still refused, not tried)
    monkeypatch.setattr(case_module, "memory_limit", lambda: limit)
    paths = _paths(work)
    _respace(paths.raw, 2, (100.0, 100.0, 100.0))
    code, lines = run(plan_main, ["--home", work / "home", *PLAN_ARGS], capsys)
    warnings = [ln for ln in lines if ln.startswith("autoseg-plan: warning: ")]
    assert code == 0 and len(warnings) == 1, lines
    assert str(_img(paths.raw, 2, 0)) in warnings[0] and "100x the median" in warnings[0], warnings
    assert any("case_002" in s for s in Plans.load(paths.plans_json).explanation)
    record("one case with 100 mm spacing among 1 mm ones", "autoseg-plan", code, warnings,
           "(a warning; the plan follows the median)", work)
    out = paths.config_dir("3d_fullres")
    shutil.rmtree(out)
    code, lines = run(preprocess_main, ["--home", work / "home", "-np", "1"], capsys)
    line = expect_one_line(code, lines, paths.raw / "imagesTr" / "case_002", "autoseg-preprocess")
    assert "voxels" in line and "beyond this machine's" in line, line
    assert sorted(p.name for p in out.glob("*.json")) == ["case_000.json", "case_001.json", "case_003.json"]
    record("one case with 100 mm spacing among 1 mm ones", "autoseg-preprocess", code, lines,
           "the other cases are written", work)


def test_preprocess_names_a_case_that_runs_out_of_memory_and_finishes_the_others(work: Path, capsys,
                                                                                 monkeypatch) -> None:
    """Memory running out while one case is resampled (other programs hold it): that case is named, the others
    are written, exit 2 at the end."""
    import autoseg.preprocessing.case as case_module

    def short_of_memory(*args, **kwargs):
        raise MemoryError()
    paths = _paths(work)
    out = paths.config_dir("3d_fullres")
    shutil.rmtree(out)
    _respace(paths.raw, 1, (1.0, 1.0, 1.5))        # case 1 is the only one resampled: the one to run short
    monkeypatch.setattr(case_module, "resample_image", short_of_memory)
    code, lines = run(preprocess_main, ["--home", work / "home", "-np", "1"], capsys)
    line = expect_one_line(code, lines, paths.raw / "imagesTr" / "case_001", "autoseg-preprocess")
    assert "out of memory while preprocessing this case" in line and "-np" not in line, line
    assert sorted(p.name for p in out.glob("*.json")) == ["case_000.json", "case_002.json", "case_003.json"]
    record("out of memory while resampling one case", "autoseg-preprocess", code, lines,
           "the other cases are written", work)


# ---------------------------------------------------------------- outputs record what made them (item 3)

def _predict(work: Path, out: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    return run(predict_main, ["-i", _paths(work).raw / "imagesTs", "-o", out, "--home", work / "home", *PREDICT_ARGS,
                              "--save-probabilities", *extra], capsys)


def _replace_keeping_name_size_and_time(image: Path) -> None:
    """Replace ``image`` by another image (one voxel changed) whose file has the same size, and give it the old
    modification time: what a name, size and time cannot tell apart."""
    array, geometry = read_image(image)
    st, old = image.stat(), image.read_bytes()
    for value in range(1, 500):
        changed = array.copy()
        changed.flat[changed.size // 2] += value
        write_image(image, changed, geometry)
        if image.stat().st_size == st.st_size:
            break
    assert image.stat().st_size == st.st_size and image.read_bytes() != old
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow
def test_predict_redoes_stale_outputs_and_skips_only_up_to_date_ones(work: Path, capsys) -> None:
    """Each case's outputs have a record of what made them (OUT/provenance/CASE.json): the same command again
    skips them, and so does an input copied anew with the same content; after retraining, an input replaced (even
    by a file of the same name, size and modification time), another option, or without a record they are redone,
    and the summary says how many and why. After retraining it used to say "0 written, 2 already done" (exit 0) and keep
    the old model's predictions."""
    paths, out = _paths(work), work / "out"
    code, lines = _predict(work, out, capsys)
    assert code == 0 and lines[-1].startswith("2 written, 0 already done, 0 failed"), lines
    assert sorted(p.name for p in (out / "provenance").iterdir()) == ["case_004.json", "case_005.json"]
    first = snapshot(out)
    code, lines = _predict(work, out, capsys)
    assert code == 0 and lines[-1].startswith("0 written, 2 already done, 0 failed"), lines
    assert snapshot(out) == first
    record("the same command again, nothing changed", "autoseg-predict", code, lines, "every output", work)

    fold_checkpoint(paths, seed=1)          # the fold retrained
    code, lines = _predict(work, out, capsys)
    assert code == 0 and lines[-1].startswith("2 written (2 of them stale, redone: another model), 0 already done, "
                                              "0 failed"), lines
    assert all(snapshot(out)[str(out / f"case_00{i}.npz")] != first[str(out / f"case_00{i}.npz")] for i in (4, 5))
    record("outputs of the model before retraining (same -o)", "autoseg-predict", code, lines, "-", work)

    image = paths.raw / "imagesTs" / "case_005_0002.nii.gz"
    image.write_bytes(image.read_bytes())   # rewritten with the same content (a new copy): the same input
    code, lines = _predict(work, out, capsys)
    assert code == 0 and lines[-1].startswith("0 written, 2 already done"), lines
    record("an input image rewritten with the same content (a new copy, other times)", "autoseg-predict", code,
           lines, "every output", work)
    _replace_keeping_name_size_and_time(image)
    code, lines = _predict(work, out, capsys)
    assert code == 0 and lines[-1].startswith("1 written (1 of them stale, redone: changed inputs), 1 already done"), \
        lines
    record("an input image replaced by another of the same name, size and modification time", "autoseg-predict",
           code, lines, "the other case's outputs", work)

    code, lines = _predict(work, out, capsys, "--step", "0.75")
    assert code == 0 and lines[-1].startswith("2 written (2 of them stale, redone: other options)"), lines

    shutil.rmtree(out / "provenance")          # outputs of an older autoseg, or copied from elsewhere
    code, lines = _predict(work, out, capsys, "--step", "0.75")
    assert code == 0 and lines[-1].startswith("2 written (2 of them stale, redone: no record of what made them)"), \
        lines
    record("outputs without a record (an older version, another tool)", "autoseg-predict", code, lines, "-", work)


@pytest.mark.slow
def test_ensemble_into_an_input_folder_is_refused_and_a_changed_input_is_redone(work: Path, capsys) -> None:
    """-o A with -i A B used to report every case "already done" (A's own segmentations) with exit 0; now one line,
    exit 2, nothing touched. An ensemble whose input folder was predicted again is redone."""
    from autoseg.cli.ensemble import main as ensemble_main
    a, b, ens = work / "a", work / "b", work / "ens"
    assert _predict(work, a, capsys)[0] == 0
    shutil.copytree(a, b)
    before = snapshot(a, b)
    code, lines = run(ensemble_main, ["-i", a, b, "-o", a], capsys)
    line = expect_one_line(code, lines, a, "autoseg-ensemble")
    assert "also an input folder" in line, line
    assert snapshot(a, b) == before
    record("-o is one of the -i folders", "autoseg-ensemble", code, lines, "both input folders", work)
    code, lines = run(ensemble_main, ["-i", a, b, "-o", ens], capsys)
    assert code == 0 and lines[-1].startswith("2 written, 0 already done"), lines
    code, lines = run(ensemble_main, ["-i", a, b, "-o", ens], capsys)
    assert code == 0 and lines[-1].startswith("0 written, 2 already done"), lines
    fold_checkpoint(_paths(work), seed=1)
    assert _predict(work, a, capsys)[0] == 0          # folder A predicted again by the retrained model
    code, lines = run(ensemble_main, ["-i", a, b, "-o", ens], capsys)
    assert code == 0 and lines[-1].startswith("2 written (2 of them stale, redone: changed inputs), 0 already done"), \
        lines
    record("an input folder predicted again since", "autoseg-ensemble", code, lines, "-", work)


def test_evaluate_records_the_files_it_scored(work: Path, capsys) -> None:
    """summary.provenance.json beside summary.json: every prediction and reference scored (name, size, content) and
    the options; written with the results, so it always describes them."""
    paths, ev = _paths(work), work / "ev"
    ref = paths.raw / "labelsTs"
    code, lines = run(evaluate_main, ["-p", work / "pred", "-r", ref, "--home", work / "home", "-o", ev], capsys)
    assert code == 0, lines
    prov = json.loads((ev / "summary.provenance.json").read_text())
    scored = [(p["name"], p["size"]) for p in prov["inputs"]]
    assert scored == [(p.name, p.stat().st_size) for c in ("case_004", "case_005")
                      for p in (work / "pred" / f"{c}.nii.gz", ref / f"{c}.nii.gz")], scored
    assert prov["command"] == "autoseg-evaluate" and prov["options"]["dataset"]["labels"]


# ---------------------------------------------------------------- one writer per folder (items 5 and 7)

def _writers(work: Path) -> dict[str, tuple[Callable, list, Path]]:
    """Each command that writes a folder: its main, arguments, and the folder it locks."""
    from autoseg.cli.ensemble import main as ensemble_main
    paths, home = _paths(work), work / "home"
    return {
        "autoseg-preprocess": (preprocess_main, ["--home", home, "-np", "1"], paths.config_dir("3d_fullres")),
        "autoseg-train": (train_main, ["3d_fullres", "fold0", "--home", home, "--epochs", "1", "--iters-per-epoch",
                                       "1", "--val-iters", "0", "--workers", "0", "--device", "cpu", "--resume"],
                          paths.fold_dir("3d_fullres", 0)),
        "autoseg-predict": (predict_main, ["-i", paths.raw / "imagesTs", "-o", work / "out", "--home", home,
                                           *PREDICT_ARGS], work / "out"),
        "autoseg-ensemble": (ensemble_main, ["-i", work / "a", work / "b", "-o", work / "ens"], work / "ens"),
        "autoseg-evaluate": (evaluate_main, ["-p", work / "pred", "-r", paths.raw / "labelsTs", "--home", home,
                                             "-o", work / "ev"], work / "ev"),
    }


WRITERS = ["autoseg-preprocess", "autoseg-train", "autoseg-predict", "autoseg-ensemble", "autoseg-evaluate"]


@pytest.mark.parametrize("prog", WRITERS)
def test_a_second_writer_of_a_folder_is_refused_naming_the_holder(work: Path, capsys, prog: str) -> None:
    """While a folder is being written (its lock held by a live process: here this one), a second command writing
    it stops at once: one line naming the holder (host, pid, since when), exit 2, nothing written. Two
    autoseg-train of one fold, or two autoseg-preprocess of one dataset, used to run at once (every log line
    twice; temporaries raced)."""
    import socket

    from autoseg.locks import write_lock
    if prog == "autoseg-ensemble":
        assert _predict(work, work / "a", capsys)[0] == 0
        shutil.copytree(work / "a", work / "b")
    main, argv, folder = _writers(work)[prog]
    with write_lock(folder, "run of the same command", "x"):
        before = snapshot(folder)
        code, lines = run(main, argv, capsys)
        assert snapshot(folder) == before
    line = expect_one_line(code, lines, folder, prog)
    assert "being written by another run of the same command (" in line, line
    assert f"pid {os.getpid()} on host {socket.gethostname()}, since 20" in line, line
    assert "wait for it to finish" in line, line
    shown = [ln.replace(f"pid {os.getpid()}", "pid 4242").replace(socket.gethostname(), "HOST") for ln in lines]
    shown = [re.sub(r"\(\S+, pid", "(COMMAND, pid", re.sub(r"since [\d-]+ [\d:]+", "since DATE TIME", ln))
             for ln in shown]
    record("the folder is being written by another command", prog, code, shown, "the folder", work)


@pytest.mark.parametrize("prog", ["autoseg-predict", pytest.param("autoseg-train", marks=pytest.mark.slow)])
def test_a_stale_lock_of_a_dead_process_is_taken_over_and_another_hosts_is_not(work: Path, capsys,
                                                                               prog: str) -> None:
    """A lock left by a process killed outright (same host, pid gone) is taken over, and released at the end; a lock
    of another host is refused (it cannot be checked from here), naming the file to delete if that job is gone."""
    import socket
    import subprocess
    import time

    from autoseg.locks import LOCK_NAME
    main, argv, folder = _writers(work)[prog]
    folder.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    what = {"autoseg-predict": "prediction", "autoseg-train": "training of this fold"}[prog]
    holder = {"what": what, "command": prog, "pid": dead.pid, "since": time.time() - 60}
    lock = folder / LOCK_NAME
    lock.write_text(json.dumps({**holder, "host": socket.gethostname()}))
    code, lines = run(main, argv, capsys)
    assert code == 0 and not lock.exists(), lines
    lock.write_text(json.dumps({**holder, "host": "node-elsewhere-17"}))
    code, lines = run(main, argv, capsys)
    line = expect_one_line(code, lines, folder, prog)
    assert "on host node-elsewhere-17" in line and f"if that job is gone, delete {lock}" in line, line
    shown = [re.sub(r"pid \d+", "pid 4242", re.sub(r"since [\d-]+ [\d:]+", "since DATE TIME", ln)) for ln in lines]
    record("a lock of another host", prog, code, shown, "the folder; the lock", work)


# ---------------------------------------------------------------- the configuration used without -c (issue 12)

def test_predict_without_c_names_the_trained_configurations_when_the_default_has_none(work: Path, capsys) -> None:
    """Without -c, autoseg-predict uses the plan's default (3d_fullres here; a 2D dataset's only 2d, see
    test_slices_pipeline). When that has no trained fold but another configuration has, the line names it."""
    paths, out = _paths(work), work / "out"
    paths.run_dir("3d_fullres").rename(paths.run_dir("3d_lowres"))
    code, lines = run(predict_main, ["-i", paths.raw / "imagesTs", "-o", out, "--home", work / "home",
                                     "--no-tta", "--device", "cpu"], capsys)
    line = expect_one_line(code, lines, paths.run_dir("3d_fullres"), "autoseg-predict")
    assert "no trained fold with checkpoint_final.pt (trained: 3d_lowres); choose one with -c 3d_lowres" in line, line
    assert not out.exists()
    record("no -c, and the default configuration (3d_fullres) has no trained fold", "autoseg-predict", code, lines,
           "no output", work)


# ---------------------------------------------------------------- --shard jobs of one output folder (issue 16)

SHARD_PAIRS = [   # (the live job's shard, this run's shard, whether this run may write beside it)
    ((0, 2), (1, 2), True), ((1, 2), (0, 4), True), ((0, 2), (0, 2), False), ((0, 2), (0, 4), False),
    ((0, 1), (1, 2), False), ((1, 2), (0, 1), False),
]


@pytest.mark.slow
def test_shards_of_one_folder_run_side_by_side_and_overlapping_ones_are_refused(work: Path, capsys) -> None:
    """The jobs of a --shard array write one folder at once; a run whose cases can overlap a live job's (the same
    shard again, 0/2 beside 0/4, a run without --shard beside any job) stops with one line naming that job. Such
    runs used to write the same cases at once unnoticed (each shard had a lock of its own, looked at by nobody else)."""
    import socket

    from autoseg.locks import lock_name, write_lock
    paths, out = _paths(work), work / "out"
    cases = ["case_004", "case_005"]
    for held, mine, allowed in SHARD_PAIRS:
        shutil.rmtree(out, ignore_errors=True)
        argv = ["-i", paths.raw / "imagesTs", "-o", out, "--home", work / "home", *PREDICT_ARGS]
        argv += ["--shard", f"{mine[0]}/{mine[1]}"] if mine[1] > 1 else []
        with write_lock(out, "prediction", "write to another folder with -o", lock_name(held)):
            code, lines = run(predict_main, argv, capsys)
            written = sorted(p.name for p in out.iterdir() if p.name.endswith(".nii.gz"))
        shown = [re.sub(r"\(\S+, pid \d+", "(COMMAND, pid 4242", re.sub(r"since [\d-]+ [\d:]+", "since DATE TIME", ln))
                 .replace(socket.gethostname(), "HOST") for ln in lines]
        words = {(0, 1): "no --shard"}.get(held, f"--shard {held[0]}/{held[1]}")
        case = f"{'--shard ' + '/'.join(map(str, mine)) if mine[1] > 1 else 'no --shard'} while {words} writes -o"
        if allowed:
            assert code == 0 and lines[-1].startswith("1 written, 0 already done, 0 failed"), (held, mine, lines)
            assert written == [f"{c}.nii.gz" for c in cases[mine[0]::mine[1]]], (held, mine, written)
            record(case, "autoseg-predict", code, shown, "- (the jobs' cases are disjoint)", work)
            continue
        line = expect_one_line(code, lines, out, "autoseg-predict")
        assert "being written by another prediction (" in line and f", pid {os.getpid()} on host" in line, line
        assert written == [], (held, mine, written)
        if held == mine:
            assert f"with the same --shard {held[0]}/{held[1]}; wait for it to finish" in line, line
        else:
            assert f"with {words}" in line and "whose cases overlap this run's" in line, line
        record(case, "autoseg-predict", code, shown, "the folder", work)
    assert not list(out.glob(".autoseg.lock*"))   # every lock released


@pytest.mark.slow
def test_two_shard_processes_started_together_write_one_folder(work: Path) -> None:
    """Two real autoseg-predict processes, --shard 0/2 and 1/2, started at once on one -o (the test above holds
    the other job's lock itself): both finish, each writes its own case, and no lock is left behind."""
    import subprocess
    import sys
    out = work / "out"
    argv = ["-i", _paths(work).raw / "imagesTs", "-o", out, "--home", work / "home", *PREDICT_ARGS]
    code = "import sys; from autoseg.cli.predict import main; main(sys.argv[1:])"
    jobs = [subprocess.Popen([sys.executable, "-c", code, *map(str, argv), "--shard", f"{i}/2"], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    for job, text in zip(jobs, outputs):
        assert job.returncode == 0, text
        assert "1 written, 0 already done, 0 failed" in text, text
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_004.nii.gz", "case_005.nii.gz"]
    assert not list(out.glob(".autoseg.lock*"))
