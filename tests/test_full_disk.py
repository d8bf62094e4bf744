"""A real full file system (issue 16): a 1 MiB tmpfs, filled up, under autoseg-predict and autoseg-evaluate.

The other full-disk tests make one write raise ENOSPC in-process; this one lets the kernel run out of space, which
found what a simulation cannot: SimpleITK reports nothing when the disk fills while it writes a .nii.gz and leaves
an empty file, which was renamed into place as a finished prediction. Mounting needs root (or the right to mount);
where that is not possible the tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoseg.cli.evaluate import main as evaluate_main
from autoseg.cli.plan import main as plan_main
from autoseg.cli.predict import main as predict_main
from autoseg.paths import DatasetPaths
from autoseg.synthetic import write_raw_dataset

sys.path.insert(0, str(Path(__file__).parent))
from test_reliability import DS, PLAN_ARGS, PREDICT_ARGS, _quiet, fold_checkpoint, run, snapshot  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test only (unmounted after it), or a skip where mounting is not allowed."""
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs Linux")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (not root?): {r.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave: int) -> Path:
    """Fill the file system up to ``leave`` free bytes with one file; return it (delete it to free the space)."""
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A planned data root with an (untrained) fold 0 and 3 test cases."""
    home = tmp_path_factory.mktemp("fulldisk") / "home"
    write_raw_dataset(home / "raw" / DS, n_train=4, n_test=3, shape=(24, 32, 32), seed=0)
    _quiet(plan_main, ["--home", home, *PLAN_ARGS])
    fold_checkpoint(DatasetPaths(home, DS))
    return home


def test_predict_on_a_full_file_system_keeps_what_was_written_and_the_rerun_completes(
        model: Path, small_fs: Path, tmp_path: Path, capsys) -> None:
    """Room for the first segmentation at most: the others fail one line each (no space left on device; free disk space and
    rerun), exit 2; what is in place is complete (byte-identical to an unhindered run), no temporary is left, a file
    written before is intact; after space is freed the rerun writes the rest and the folder equals the unhindered
    run's. Before: two 0-byte CASE.nii.gz were left as finished predictions and a rerun called them done."""
    argv = ["-i", model / "raw" / DS / "imagesTs", "--home", model, *PREDICT_ARGS]
    ref, out = tmp_path / "ref", small_fs / "out"
    assert run(predict_main, [*argv, "-o", ref], capsys)[0] == 0
    earlier = small_fs / "earlier.bin"
    earlier.write_bytes(os.urandom(50_000))
    before = snapshot(earlier)
    filler = fill(small_fs, 8 * 1024)             # two pages: a segmentation takes one (3 KB), the lock one
    code, lines = run(predict_main, [*argv, "-o", out], capsys)
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert code == 2 and failed and len(lines) == len(failed) + 1, lines
    assert all("no space left on device while writing; free disk space and rerun" in ln for ln in failed), lines
    assert lines[-1].endswith(f"{len(failed)} failed -> {out}"), lines
    assert snapshot(earlier) == before
    assert not [p for p in out.rglob(".*")], "no temporary left"
    for p in (q for q in out.rglob("*") if q.is_file()):   # what is there is complete
        assert p.read_bytes() == (ref / p.relative_to(out)).read_bytes(), p
    filler.unlink()
    code, lines = run(predict_main, [*argv, "-o", out], capsys)
    assert code == 0 and lines[-1].startswith(f"{len(failed)} written"), lines
    assert sorted(str(p.relative_to(ref)) for p in ref.rglob("*")) == sorted(str(p.relative_to(out))
                                                                             for p in out.rglob("*"))
    for p in (q for q in ref.rglob("*") if q.is_file()):
        assert p.read_bytes() == (out / p.relative_to(ref)).read_bytes(), p


def test_evaluate_on_a_full_file_system_is_one_line_and_keeps_the_earlier_results(
        model: Path, small_fs: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred"
    assert run(predict_main, ["-i", model / "raw" / DS / "imagesTs", "-o", pred, "--home", model, *PREDICT_ARGS],
               capsys)[0] == 0
    ev = small_fs / "ev"
    argv = ["-p", pred, "-r", model / "raw" / DS / "labelsTs", "--home", model, "-o", ev]
    assert run(evaluate_main, argv, capsys)[0] == 0
    before = snapshot(ev)
    fill(small_fs, 4096)                         # room for the lock file, not for the results
    code, lines = run(evaluate_main, [*argv, "--png"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"autoseg-evaluate: error: {ev}") and "no space left on device" in lines[0].lower(), lines
    assert snapshot(ev) == before and not [p for p in ev.rglob(".*")]
