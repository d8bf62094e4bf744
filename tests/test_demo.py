"""The demo: fixed training length, safe cleanup, data generation + conversion, the CLI, and a quick smoke run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from autoseg.cli.demo import main
from autoseg.dataset import load_dataset
from autoseg.demo import DemoOptions, DemoSettings, clear_previous_demo, convert, demo_paths, generate_data, mark, run_demo


def test_full_demo_trains_a_fixed_length_whatever_the_machine():
    """The outcome must not depend on the machine's speed: no wall-clock budget, a fixed number of steps."""
    s = DemoSettings.full()
    assert (s.epochs, s.iters_per_epoch, s.n_test) == (12, 25, 8)
    assert "budget" not in DemoOptions.__dataclass_fields__


def test_cleanup_deletes_only_marked_folders(tmp_path: Path):
    paths, out = demo_paths(tmp_path / "home"), tmp_path / "out"
    for folder in (paths.raw, paths.results, out):
        mark(folder)
        (folder / "x.txt").write_text("old")
    clear_previous_demo(paths, out)
    assert not paths.raw.exists() and not paths.results.exists() and not out.exists()

    (out / "mine").mkdir(parents=True)
    with pytest.raises(Exception, match="not written by autoseg-demo"):
        clear_previous_demo(paths, out)
    assert (out / "mine").is_dir()
    out.joinpath("mine").rmdir()
    clear_previous_demo(paths, out)  # an empty folder is fine


def test_generated_folders_convert_and_hold_back_test_labels(tmp_path: Path):
    settings = replace(DemoSettings.quick(), n_train=2, n_test=1, shape=(24, 32, 32))
    opts = DemoOptions(home=tmp_path / "home", out=tmp_path / "out", settings=settings, workers=1)
    paths = demo_paths(opts.home)
    src, refs = generate_data(opts)
    convert(src, paths, workers=1)
    info, cases = load_dataset(paths.raw)
    assert info.label_convention == "brats2020" and len(cases) == 2
    test_images = sorted(p.name for p in (paths.raw / "imagesTs").glob("*_0000.nii.gz"))
    assert test_images == ["BraTS20_Synthetic_002_0000.nii.gz"]
    assert [p.name for p in refs.glob("*.nii.gz")] == ["BraTS20_Synthetic_002.nii.gz"]


def test_cli_help_and_bad_epochs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--epochs" in out and "--precision" in out
    with pytest.raises(SystemExit) as e:
        main(["--epochs", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--epochs" in err


def test_cli_refuses_a_foreign_output_folder(tmp_path: Path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("do not delete")
    with pytest.raises(SystemExit) as e:
        main(["--home", str(tmp_path / "home"), "--out", str(tmp_path / "out"), "--quick"])
    assert e.value.code == 2 and "not written by autoseg-demo" in capsys.readouterr().err
    assert (tmp_path / "out" / "thesis.tex").read_text() == "do not delete"
    assert not (tmp_path / "home" / "raw").exists()


@pytest.mark.slow
def test_quick_demo_runs_the_whole_path(tmp_path: Path):
    """The reduced demo end to end: every artefact exists, the report embeds the overlays, and the fixed
    number of epochs is trained and validated."""
    opts = DemoOptions(home=tmp_path / "home", out=tmp_path / "out", settings=replace(DemoSettings.quick(), epochs=2),
                       workers=1, precision="fp32")
    said: list[str] = []
    result = run_demo(opts, say=said.append)
    assert set(result.dice) == {"whole tumour", "tumour core", "enhancing tumour"}
    assert all(0.0 <= d <= 1.0 for d in result.dice.values()) and result.epochs == 2
    assert all(Path(p).exists() for p in result.artefacts.values())
    assert len(list((opts.out / "predictions").glob("*.nii.gz"))) == opts.settings.n_test
    assert len(list((opts.out / "overlays").glob("*.png"))) == opts.settings.n_test
    assert (opts.out / "report.html").read_text().count("data:image/png;base64,") == opts.settings.n_test
    assert any("[8/8]" in line for line in said) and "whole tumour" in result.describe()
    assert (result.artefacts["trained fold"] / "validation" / "summary.json").is_file()
    log = (result.artefacts["trained fold"] / "log.txt").read_text()
    assert "epoch 1:" in log and "epoch 2:" not in log and "precision fp32" in log


COMMANDS = ("convert", "plan", "preprocess", "train", "predict", "ensemble", "evaluate", "demo", "export", "import")
MODULES = {"import": "import_model"}   # a command whose module is not named after it (``import`` is a keyword)


@pytest.mark.parametrize("name", COMMANDS)
def test_commands_page_lists_every_option(name: str, capsys):
    """docs/commands.md is generated from --help; regenerate it (bash docs/gen_commands.sh) when this fails."""
    import importlib
    import re

    main_fn = importlib.import_module(f"autoseg.cli.{MODULES.get(name, name)}").main
    helps = []
    for argv in (["--help"], ["brats", "--help"]) if name == "convert" else (["--help"],):
        with pytest.raises(SystemExit):
            main_fn(argv)
        helps.append(capsys.readouterr().out)
    options = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", " ".join(helps)))
    page = (Path(__file__).resolve().parents[1] / "docs" / "commands.md").read_text()
    section = page.split(f"## autoseg-{name}\n", 1)[1].split("\n## ", 1)[0]
    missing = sorted(o for o in options if o not in section)
    assert not missing, f"docs/commands.md lacks {missing} of autoseg-{name}"


def test_readme_and_docs_links_resolve():
    """Every relative link in README.md and docs/*.md points at a file that exists."""
    import re

    root = Path(__file__).resolve().parents[1]
    broken = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(root)} -> {target}")
    assert not broken, broken
