"""Model packaging (autoseg-export / autoseg-import / autoseg-predict --model) and the ONNX export.

A model exported from a data root predicts byte-identical segmentations with no data root; importing it into
another root works like training there; a malicious zip (path escapes, links, a pickle payload, a zip bomb,
edited files) is refused in one line with nothing written outside and no code run."""

from __future__ import annotations

import io
import json
import shlex
import stat
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.checkpoint import save_checkpoint
from autoseg.cli.export import main as export_main
from autoseg.cli.import_model import main as import_main
from autoseg.cli.predict import main as predict_main
from autoseg.dataset import DatasetInfo
from autoseg.network import network_for_dataset
from autoseg.packaging import MANIFEST, ExtractionLimits, extract_model_zip
from autoseg.paths import DatasetPaths
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan, Plans
from autoseg.postprocessing import PostprocessingPlan

DS = "Dataset001_Synthetic"
FAST = ["--no-tta", "--device", "cpu", "--precision", "fp32"]


def tiny_plan() -> ConfigurationPlan:
    net = NetworkPlan("unet", [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [1, 1, 1], [1, 1])
    return ConfigurationPlan("3d_fullres", [1.0, 1.0, 1.0], [48, 64, 64], [48, 64, 64], 2, net,
                             [ChannelNormalization("zscore", True)] * 4, 0.1)


def write_fold(home: Path, folder: str, fold: int | str, seed: int, dataset_json: Path | None = None) -> Path:
    """A checkpoint as autoseg-train writes it: weights plus optimizer, RNG, log and options."""
    paths = DatasetPaths(home, DS)
    info = DatasetInfo.load(dataset_json or paths.dataset_json)
    plan = tiny_plan()
    torch.manual_seed(seed)
    net = network_for_dataset(plan.network, info)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    path = paths.results / folder / f"fold_{fold}" / "checkpoint_final.pt"
    save_checkpoint(path, {"configuration": asdict(plan), "dataset": info.to_dict(), "dataset_folder": DS,
                           "fold": str(fold), "network_state": net.state_dict(), "epoch": 3,
                           "optimizer_state": optimizer.state_dict(), "grad_scaler_state": {},
                           "sampler_state": {"seed": 0, "next_epoch": 3},
                           "rng_state": {"torch": torch.get_rng_state(), "cuda": []},
                           "log": {"region_names": info.foreground_names}, "options": {"pretrained": "/home/x/private.pt"}})
    return path


@pytest.fixture
def trained(synthetic_home: Path) -> DatasetPaths:
    """Two trained folds of 3d_fullres, fold 0 validated, and a postprocessing decision."""
    paths = DatasetPaths(synthetic_home, DS)
    Plans(DS, 8.0, "test", "RAS", 4, 3, True, {"3d_fullres": tiny_plan()}).save(paths.plans_json)
    write_fold(synthetic_home, "3d_fullres", 0, 0)
    write_fold(synthetic_home, "3d_fullres", 1, 1)
    summary = {"cases": {"c1": {}, "c2": {}}, "mean": {n: {"dice": 0.8125, "hd95": 3.0} for n in
                                                        DatasetInfo.load(paths.dataset_json).foreground_names},
               "space": "preprocessed"}
    (paths.fold_dir("3d_fullres", 0) / "validation").mkdir()
    (paths.fold_dir("3d_fullres", 0) / "validation" / "summary.json").write_text(json.dumps(summary))
    PostprocessingPlan(True, (), {}, {}, 2).save(paths.results / "postprocessing.json")
    return paths


def run(main, argv, capsys) -> tuple[int, list[str], str]:
    """Exit code, stderr lines and stdout of one command."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def export(paths: DatasetPaths, out: Path, capsys, *extra) -> Path:
    code, err, _ = run(export_main, ["--home", paths.root, "-d", "1", "-o", out, *extra], capsys)
    assert code == 0, err
    return out


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.slow
def test_a_model_predicts_byte_identical_segmentations_without_a_data_root(trained, tmp_path, capsys, monkeypatch):
    model = export(trained, tmp_path / "model.zip", capsys)
    with zipfile.ZipFile(model) as zf:
        names = set(zf.namelist())
        ckpt = torch.load(io.BytesIO(zf.read("results/3d_fullres/fold_0/checkpoint_final.pt")), weights_only=True)
        readme = zf.read("README.md").decode()
    assert names == {MANIFEST, "README.md", "dataset.json", "plans.json", "postprocessing.json",
                     "results/3d_fullres/fold_0/checkpoint_final.pt", "results/3d_fullres/fold_1/checkpoint_final.pt",
                     "results/3d_fullres/fold_0/validation/summary.json"}
    assert not {"optimizer_state", "rng_state", "log", "options"} & set(ckpt)   # weights only, no local paths
    assert {"network_state", "configuration", "dataset", "plan_hash", "fold"} <= set(ckpt)
    assert "| 3d_fullres | 0 | 2 | preprocessed | 0.8125" in readme and "folds" in readme
    assert model.read_bytes() == export(trained, tmp_path / "again.zip", capsys).read_bytes()   # reproducible

    images = trained.raw / "imagesTs"
    post = trained.results / "postprocessing.json"
    code, err, _ = run(predict_main, ["-i", images, "-o", tmp_path / "root", "--home", trained.root, "-d", "1",
                                      "--postprocess", post, *FAST], capsys)
    assert code == 0, err
    reference = outputs(tmp_path / "root")
    assert len(reference) == 2

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.delenv("AUTOSEG_HOME", raising=False)
    code, err, _ = run(predict_main, ["--model", model, "-i", images, "-o", empty / "zip", *FAST], capsys)
    assert code == 0, err
    assert any("applying the model's postprocessing.json" in line for line in err)
    assert outputs(empty / "zip") == reference
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(model).extractall(unpacked)
    code, err, _ = run(predict_main, ["--model", unpacked, "-i", images, "-o", empty / "dir", "-f", "0", "1", *FAST],
                       capsys)
    assert code == 0 and outputs(empty / "dir") == reference
    assert sorted(p.name for p in empty.iterdir()) == ["dir", "zip"]    # no data root appeared

    code, err, _ = run(predict_main, ["--model", model, "-i", images, "-o", empty / "one", "-f", "2", *FAST], capsys)
    assert code == 2 and len(err) == 1 and "fold(s) 2 not in the model" in err[0]
    code, err, _ = run(predict_main, ["--model", model, "-d", "1", "-i", images, "-o", empty / "x", *FAST], capsys)
    assert code == 2 and len(err) == 1 and "--model replaces the data root" in err[0]


@pytest.mark.slow
def test_several_configurations_need_c_and_only_finished_folds_are_exported(trained, tmp_path, capsys):
    write_fold(trained.root, "segresnet__3d_fullres", 0, 5)
    (trained.results / "3d_fullres" / "fold_2").mkdir()
    (trained.results / "3d_fullres" / "fold_2" / "checkpoint_latest.pt").write_bytes(b"unfinished")
    code, err, out = run(export_main, ["--home", trained.root, "-o", tmp_path / "m.zip"], capsys)
    assert code == 0 and err == ["autoseg-export: 3d_fullres/fold_2 has no checkpoint_final.pt (not finished): "
                                 "not exported"]
    assert "3d_fullres folds 0 1; 3d_fullres (recipe segresnet) folds 0" in out
    images = trained.raw / "imagesTs"
    code, err, _ = run(predict_main, ["--model", tmp_path / "m.zip", "-i", images, "-o", tmp_path / "o", *FAST], capsys)
    assert code == 2 and len(err) == 1 and "holds several configurations (3d_fullres, segresnet__3d_fullres)" in err[0]
    code, err, _ = run(predict_main, ["--model", tmp_path / "m.zip", "-c", "segresnet__3d_fullres", "-i", images,
                                      "-o", tmp_path / "o", "--no-postprocess", *FAST], capsys)
    assert code == 0 and len(list((tmp_path / "o").glob("*.nii.gz"))) == 2
    code, err, _ = run(export_main, ["--home", trained.root, "-o", tmp_path / "r.zip", "--recipe", "segresnet"], capsys)
    with zipfile.ZipFile(tmp_path / "r.zip") as zf:
        assert code == 0 and json.loads(zf.read(MANIFEST))["models"][0]["folder"] == "segresnet__3d_fullres"
    code, err, _ = run(export_main, ["--home", trained.root, "-o", tmp_path / "f.zip", "-c", "3d_fullres", "-f", "4"],
                       capsys)
    assert code == 2 and len(err) == 1 and "fold(s) 4 not trained" in err[0] and not (tmp_path / "f.zip").exists()
    code, err, _ = run(export_main, ["--home", trained.root, "-o", tmp_path / "g.zip", "-c", "2d"], capsys)
    assert code == 2 and len(err) == 1 and "no trained fold of 2d" in err[0]


@pytest.mark.slow
def test_import_adds_the_model_to_a_data_root_once_and_refuses_to_overwrite(trained, tmp_path, capsys):
    model = export(trained, tmp_path / "model.zip", capsys)
    home = tmp_path / "other"
    code, err, out = run(import_main, [model, "--home", home], capsys)
    assert code == 0, err
    assert "7 file(s) written, 0 already there" in out
    assert (home / "results" / DS / "3d_fullres" / "fold_1" / "checkpoint_final.pt").is_file()
    assert (home / "preprocessed" / DS / "plans.json").is_file()
    images = trained.raw / "imagesTs"
    for root, out_dir in ((trained.root, "a"), (home, "b")):
        code, err, _ = run(predict_main, ["-i", images, "-o", tmp_path / out_dir, "--home", root, "-d", "1", *FAST],
                           capsys)
        assert code == 0, err
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")
    code, err, out = run(import_main, [model, "--home", home], capsys)
    assert code == 0 and "0 file(s) written" in out

    write_fold(home, "3d_fullres", 1, 9, trained.dataset_json)   # another run of fold 1 is there now
    before = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}
    code, err, _ = run(import_main, [model, "--home", home], capsys)
    assert code == 2 and len(err) == 1 and "fold_1/checkpoint_final.pt: already exists with other content" in err[0]
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == before


def write_instructions(paths: DatasetPaths) -> list[str]:
    """inference_instructions.json and .md as autoseg-find-best writes them for the pair 3d_fullres +
    segresnet__3d_fullres (two predict commands and an ensemble, naming the data root); their commands."""
    from autoseg.io import write_bytes_atomic, write_json_atomic
    from autoseg.selection import Crossval, commands_for, instructions_markdown
    paths.splits_json.write_text(json.dumps([{"train": ["c2"], "val": ["c1"]}, {"train": ["c1"], "val": ["c2"]}]))
    best = "3d_fullres+segresnet__3d_fullres"
    row = {"model": best, "members": [], "dice": {"WT": 0.8}, "mean_dice": 0.8, "mean_hd95": 3.0, "num_cases": 2,
           "results": f"ensembles/{best}/crossval/summary.json"}
    commands = commands_for(paths, Crossval(best, {}), paths.results.resolve() / "postprocessing.json")
    instructions = {"dataset": DS, "best": row, "ranking": [row], "commands": commands, "incomplete": [],
                    "postprocessing": {"file": "postprocessing.json", "largest_component_of": ["foreground"],
                                       "mean_dice_before": 0.79, "mean_dice_after": 0.8},
                    "placeholders": {"INPUT_FOLDER": "the cases to predict", "OUTPUT_FOLDER": "the segmentations"}}
    write_json_atomic(paths.results / "inference_instructions.json", instructions)
    write_bytes_atomic(paths.results / "inference_instructions.md", instructions_markdown(instructions).encode())
    return commands


def word_after(command: str, option: str) -> str:
    words = shlex.split(command)
    return words[words.index(option) + 1]


def test_the_instructions_name_the_data_root_they_are_in(trained, tmp_path, capsys):
    """Exported, the commands name DATA_ROOT, not the trainer's folders; imported, the importing root (paths
    with spaces stay one word); a second import finds them unchanged."""
    trainer = trained.root.rename(tmp_path / "trainer data")
    paths = DatasetPaths(trainer, DS)
    commands = write_instructions(paths)
    assert word_after(commands[0], "--home") == str(trainer.resolve())   # absolute where it was trained
    assert word_after(commands[2], "--postprocess").startswith(f"{trainer.resolve()}/")
    before = {name: (paths.results / name).read_bytes() for name in ("inference_instructions.json",
                                                                     "inference_instructions.md")}
    model = export(paths, tmp_path / "model.zip", capsys)
    assert before == {name: (paths.results / name).read_bytes() for name in before}
    with zipfile.ZipFile(model) as zf:
        shared, md = json.loads(zf.read("inference_instructions.json")), zf.read("inference_instructions.md").decode()
    assert "trainer data" not in json.dumps(shared) and "trainer data" not in md
    assert "DATA_ROOT" in shared["placeholders"] and shared["commands"][0] in md and "DATA_ROOT" in md
    assert [word_after(c, "--home") for c in shared["commands"][:2]] == ["DATA_ROOT", "DATA_ROOT"]
    assert word_after(shared["commands"][2], "--postprocess") == f"DATA_ROOT/results/{DS}/postprocessing.json"

    home = tmp_path / "other root"
    code, err, out = run(import_main, [model, "--home", home], capsys)
    assert code == 0, err
    here = DatasetPaths(home, DS).results
    imported, md = json.loads((here / "inference_instructions.json").read_text()), \
        (here / "inference_instructions.md").read_text()
    assert "DATA_ROOT" not in imported["placeholders"] and "DATA_ROOT" not in md and "trainer data" not in md
    assert imported["commands"] == [shlex.join(w.replace(str(trainer.resolve()), str(home.resolve()))
                                               for w in shlex.split(c)) for c in commands]   # only the root moved
    assert [word_after(c, "--home") for c in imported["commands"][:2]] == [str(home.resolve())] * 2
    post = Path(word_after(imported["commands"][2], "--postprocess"))
    assert post.is_relative_to(home.resolve()) and post.is_file()
    assert imported["commands"][0] in md
    code, err, out = run(import_main, [model, "--home", home], capsys)
    assert code == 0 and "0 file(s) written" in out, err


def test_malformed_instructions_refuse_the_export_in_one_line(trained, tmp_path, capsys):
    (trained.results / "inference_instructions.json").write_text('{"commands": ["autoseg-predict \'unclosed"]}')
    code, err, _ = run(export_main, ["--home", trained.root, "-d", "1", "-o", tmp_path / "m.zip"], capsys)
    assert code == 2 and len(err) == 1 and "inference_instructions.json: malformed inference instructions" in err[0]
    assert not (tmp_path / "m.zip").exists()


# ---- malicious and damaged models ---------------------------------------------------------------------

def rezip(model: Path, out: Path, replace: dict[str, bytes | None] = {}, add: dict[str, bytes] = {},
          fix_manifest: bool = False, link: str | None = None) -> Path:
    """A copy of ``model`` with members replaced, dropped (None) or added; ``fix_manifest`` updates the hashes
    so that only the payload itself can be what refuses it; ``link`` adds a symbolic link member."""
    import hashlib
    with zipfile.ZipFile(model) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    for name, data in replace.items():
        if data is None:
            members.pop(name)
        else:
            members[name] = data
    if fix_manifest:
        manifest = json.loads(members[MANIFEST])
        for name, data in replace.items():
            if data is not None:
                manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        members[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**members, **add}.items():
            zf.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return out


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a booby-trapped checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def refused(argv_for, capsys, tmp_path) -> str:
    """Run predict --model and import on the zip; both must exit 2 with the same single line, writing nothing."""
    lines = []
    for main, argv in argv_for:
        before = sorted(tmp_path.rglob("*"))
        code, err, _ = run(main, argv, capsys)
        assert code == 2 and len(err) == 1, err
        assert sorted(tmp_path.rglob("*")) == before
        lines.append(err[0])
    return lines[0]


@pytest.fixture
def model(trained, tmp_path, capsys) -> Path:
    return export(trained, tmp_path / "model.zip", capsys)


def attacks(bad: Path, trained: DatasetPaths, tmp_path: Path):
    home = tmp_path / "target_home"
    return [(predict_main, ["--model", bad, "-i", trained.raw / "imagesTs", "-o", tmp_path / "out", *FAST]),
            (import_main, [bad, "--home", home])]


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "results/../../evil.txt", "..\\evil.txt",
                                  "C:/evil.txt", "results/3d_fullres/fold_0/../../../evil.pt"])
def test_a_path_leaving_the_model_is_refused(name, model, trained, tmp_path, capsys):
    bad = rezip(model, tmp_path / "bad.zip", add={name: b"owned"})
    line = refused(attacks(bad, trained, tmp_path), capsys, tmp_path)
    assert line.startswith(f"autoseg-predict: error: {bad}: refused: member {name!r} is not part of an autoseg model")
    assert not list(tmp_path.rglob("evil.*")) and not list(Path("/tmp").glob("evil.*"))


def test_a_symbolic_link_is_refused(model, trained, tmp_path, capsys):
    bad = rezip(model, tmp_path / "bad.zip", link="results/3d_fullres/fold_0/validation/summary.json",
                replace={"results/3d_fullres/fold_0/validation/summary.json": None})
    assert "is a symbolic link" in refused(attacks(bad, trained, tmp_path), capsys, tmp_path)


def test_a_pickle_payload_never_runs(model, trained, tmp_path, capsys):
    member = "results/3d_fullres/fold_1/checkpoint_final.pt"
    marker = tmp_path / "PWNED"
    with zipfile.ZipFile(model) as zf:
        ckpt = torch.load(io.BytesIO(zf.read(member)), weights_only=True)
    ckpt["extra"] = Payload(marker)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    bad = rezip(model, tmp_path / "bad.zip", replace={member: buffer.getvalue()}, fix_manifest=True)
    line = refused(attacks(bad, trained, tmp_path), capsys, tmp_path)
    assert f"{bad}/{member}: refused: the checkpoint holds objects other than tensors" in line
    assert not marker.exists()
    stale = rezip(model, tmp_path / "stale.zip", replace={member: buffer.getvalue()})   # manifest not updated
    assert "differs from the manifest" in refused(attacks(stale, trained, tmp_path), capsys, tmp_path)
    assert not marker.exists()


def test_a_zip_bomb_is_refused_before_anything_is_unpacked(model, trained, tmp_path, capsys):
    member = "results/3d_fullres/fold_1/checkpoint_final.pt"
    bad = rezip(model, tmp_path / "bad.zip", replace={member: bytes(64 << 20)}, fix_manifest=True)
    assert bad.stat().st_size < 1 << 20
    line = refused(attacks(bad, trained, tmp_path), capsys, tmp_path)
    assert f"refused: member {member!r} is compressed" in line and "zip bomb" in line


def test_size_and_count_limits(model, tmp_path):
    from autoseg.errors import AutosegError
    cases = {"unpacks to": ExtractionLimits(max_member_bytes=1000), "more than": ExtractionLimits(max_total_bytes=5000),
             "members": ExtractionLimits(max_members=3)}
    for words, limits in cases.items():
        target = tmp_path / words.replace(" ", "_")
        target.mkdir()
        with pytest.raises(AutosegError, match=words):
            extract_model_zip(model, target, limits)
        assert not any(target.iterdir())


def test_damaged_or_foreign_zips_are_one_line(model, trained, tmp_path, capsys):
    not_zip = tmp_path / "notes.zip"
    not_zip.write_text("hello")
    assert "not a readable zip file" in refused(attacks(not_zip, trained, tmp_path), capsys, tmp_path)
    foreign = rezip(model, tmp_path / "foreign.zip", replace={MANIFEST: None})
    assert "no autoseg_model.json" in refused(attacks(foreign, trained, tmp_path), capsys, tmp_path)
    edited = rezip(model, tmp_path / "edited.zip", replace={"plans.json": b'{"x": 1}\n'})
    assert "plans.json differs from the manifest" in refused(attacks(edited, trained, tmp_path), capsys, tmp_path)


# ---- ONNX ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_onnx_export_matches_torch_on_a_window(trained, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "fold0.onnx"
    code, err, stdout = run(export_main, ["--home", trained.root, "-o", out, "--format", "onnx", "-f", "0"], capsys)
    assert code == 0, err
    assert "onnxruntime matches torch on a 1x4x48x64x64 window" in stdout
    description = json.loads((tmp_path / "fold0.onnx.json").read_text())
    assert description["input"]["shape"] == ["batch", 4, 48, 64, 64] and description["output"]["shape"][1] == 3
    assert "region logits" in description["output"]["meaning"]
    assert description["check"]["onnxruntime_max_abs_difference"] <= 1e-3

    ckpt = torch.load(trained.fold_dir("3d_fullres", 0) / "checkpoint_final.pt", weights_only=True)
    info = DatasetInfo.from_dict(ckpt["dataset"])
    net = network_for_dataset(tiny_plan().network, info, deep_supervision=False)
    net.load_state_dict(ckpt["network_state"])
    window = torch.randn(2, 4, 48, 64, 64, generator=torch.Generator().manual_seed(7)) * 2
    with torch.no_grad():
        expected = net.eval()(window).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": window.numpy()})[0]
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-3


@pytest.mark.slow
def test_onnx_export_refusals_are_one_line(trained, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    code, err, _ = run(export_main, ["--home", trained.root, "-o", out, "--format", "onnx"], capsys)
    assert code == 2 and len(err) == 1 and "exports one fold of one configuration" in err[0]
    import autoseg.deployment as deployment
    monkeypatch.setattr(deployment, "onnxruntime_difference", lambda *a: 0.5)
    code, err, _ = run(export_main, ["--home", trained.root, "-o", out, "--format", "onnx", "-f", "1"], capsys)
    assert code == 2 and len(err) == 1 and "onnxruntime and torch disagree" in err[0] and not out.exists()
    real = deployment.importlib.util.find_spec
    monkeypatch.setattr(deployment.importlib.util, "find_spec", lambda n, *a: None if n == "onnx" else real(n, *a))
    code, err, _ = run(export_main, ["--home", trained.root, "-o", out, "--format", "onnx", "-f", "1"], capsys)
    assert code == 2 and len(err) == 1 and "pip install 'autoseg[onnx]'" in err[0]
