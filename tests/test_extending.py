"""A network registered from outside the package (docs/extending.md, installed as a real distribution on a
temporary sys.path entry) is planned, trained and predicted with through the real commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from autoseg.checkpoint import load_checkpoint
from autoseg.cli.plan import main as plan_main
from autoseg.cli.predict import main as predict_main
from autoseg.cli.preprocess import main as preprocess_main
from autoseg.cli.train import main as train_main
from autoseg.network import build_network, estimate_memory, network_names, network_spec
from autoseg.paths import DatasetPaths
from autoseg.plans import NetworkPlan, Plans

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
DS = "Dataset001_Synthetic"


def install_doc_example(site: Path) -> str:
    """Write docs/extending.md's module and the entry point of its pyproject.toml as an installed distribution
    (what ``pip install`` leaves: the module and a dist-info with entry_points.txt); return the arch name."""
    text = DOC.read_text(encoding="utf-8")
    module = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    toml = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    group = re.search(r'\[project\.entry-points\."(.+?)"\]\n(\w+) = "(.+?)"', toml)
    assert group and group.group(1) == "autoseg.networks", "the doc's pyproject declares no autoseg.networks entry point"
    name, target = group.group(2), group.group(3)
    (site / f"{target.split(':')[0]}.py").write_text(module, encoding="utf-8")
    info = site / "mynets-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mynets\nVersion: 0.1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[autoseg.networks]\n{name} = {target}\n", encoding="utf-8")
    return name


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    site = tmp_path / "site"
    site.mkdir()
    name = install_doc_example(site)
    monkeypatch.syspath_prepend(str(site))
    return name


def run(main, argv: list) -> int:
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def test_an_entry_point_network_is_in_the_registry(registered: str) -> None:
    assert registered == "tinynet" and network_names()[-1] == "tinynet"
    plan = NetworkPlan("tinynet", [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [2, 2], [2])
    net = build_network(plan, 4, 3)
    assert type(net).__name__ == "TinyNet" and list(net(torch.zeros(1, 4, 8, 8, 8)).shape) == [1, 3, 8, 8, 8]
    assert estimate_memory(plan, [8, 8, 8], 2, 4, 3, True).total > 0
    assert network_spec("unet").build.__module__ == "autoseg.network.registry"   # built-in names stay built-in


@pytest.mark.slow
def test_a_registered_network_plans_trains_and_predicts_through_the_commands(registered, synthetic_home, tmp_path,
                                                                             capsys) -> None:
    home = synthetic_home
    assert run(plan_main, ["--home", home, "-d", "1", "--vram", "0.5", "--arch", registered, "--spacing", "4",
                           "--base-features", "4", "--max-features", "16", "-np", "1"]) == 0
    paths = DatasetPaths(home, DS)
    assert {c.network.arch for c in Plans.load(paths.plans_json).configurations.values()} == {registered}
    assert run(preprocess_main, ["--home", home, "-d", "1", "-c", "3d_fullres", "-np", "1"]) == 0
    assert run(train_main, ["3d_fullres", "fold0", "--home", home, "-d", "1", "--epochs", "1", "--iters-per-epoch", "2",
                            "--val-iters", "0", "--workers", "0", "--device", "cpu", "--no-validation"]) == 0
    ckpt = load_checkpoint(next(paths.results.rglob("checkpoint_final.pt")))
    assert ckpt["configuration"]["network"]["arch"] == registered
    assert all(k.startswith("body.") for k in ckpt["network_state"])   # the region head adds no weights
    out = tmp_path / "pred"
    assert run(predict_main, ["-i", paths.raw / "imagesTs", "-o", out, "--home", home, "-d", "1", "-c", "3d_fullres",
                              "-f", "0", "--no-tta", "--device", "cpu", "--precision", "fp32"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 2
    capsys.readouterr()
    assert run(plan_main, ["--home", home, "-d", "1", "--vram", "0.5", "--arch", "nonet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "unknown network 'nonet'" in err[0] and registered in err[0]
