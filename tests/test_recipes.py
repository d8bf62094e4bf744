"""Recipes: the format and its checks, the parts they choose (focal loss, weights, warm-up cosine, per-sample
foreground, accumulation, deep-supervision weights), the default recipe = the method before recipes, and
training, resuming and predicting with a non-default recipe through the commands."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _training_fixtures import build_home, copy_home, tiny_plan  # noqa: E402

from autoseg.checkpoint import load_checkpoint  # noqa: E402
from autoseg.cli.predict import main as predict_main  # noqa: E402
from autoseg.cli.train import main as train_main  # noqa: E402
from autoseg.data.loader import Batch, BatchKey, BatchMaker  # noqa: E402
from autoseg.dataset import DatasetInfo  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from autoseg.paths import run_folder_name  # noqa: E402
from autoseg.recipes import (RECIPES_DIR, Recipe, load_recipe, network_plan, parse_recipe,  # noqa: E402
                             recipe_of_checkpoint, shipped_recipes)
from autoseg.training import TrainOptions, train_fold  # noqa: E402
from autoseg.training.losses import (DeepSupervisionLoss, binary_cross_entropy, cross_entropy,  # noqa: E402
                                     deep_supervision_weights, recipe_loss, segmentation_loss)
from autoseg.training.schedule import epoch_lr, warmup_cosine_lr, warmup_epochs  # noqa: E402
from autoseg.training import trainer  # noqa: E402
from autoseg.training.trainer import train_step  # noqa: E402

SHIPPED = ("nnunet", "nnunet-256", "resunet-8gb", "segresnet", "attention-unet")


# ---- the format ---------------------------------------------------------------------------------------
def test_the_shipped_recipes_parse_are_named_as_their_files_and_nnunet_is_the_default():
    assert set(shipped_recipes()) == set(SHIPPED) and shipped_recipes()[0] == "nnunet"
    for name in SHIPPED:
        r = load_recipe(name)
        assert r.name == name and r.description
        assert parse_recipe(r.to_dict(), "x") == r   # to_dict writes only what applies, and reads back equal
    assert load_recipe("nnunet") == Recipe() == load_recipe(None)
    d = Recipe()
    assert (d.loss.name, d.loss.dice, d.optimiser.name, d.optimiser.momentum, d.optimiser.nesterov, d.schedule.name,
            d.deep_supervision, d.foreground.mode, d.accumulation) == ("dice_ce", "log", "sgd", 0.99, True, "poly",
                                                                       "halving", "batch", 1)
    seg = load_recipe("segresnet")
    assert (seg.loss.name, seg.optimiser.name, seg.schedule.name) == ("dice_focal", "adamw", "warmup_cosine")
    r8 = load_recipe("resunet-8gb")
    assert (r8.accumulation, r8.deep_supervision, r8.foreground.share) == (2, (1.0, 0.5, 0.25), 0.5)
    n256 = load_recipe("nnunet-256")
    assert (n256.foreground.share, n256.foreground.mode) == (0.66, "sample")


def test_a_partial_recipe_takes_the_default_for_every_field_it_leaves_out():
    r = parse_recipe({"name": "mine", "loss": {"name": "dice_focal", "focal_gamma": 1.5}}, "mine.json")
    assert r.loss.focal_gamma == 1.5 and r.loss.dice == "log"
    assert replace(r, name="nnunet", description=Recipe().description, loss=Recipe().loss) == Recipe()
    assert [k for k, _, _ in r.differences(Recipe())] == ["loss.focal_gamma", "loss.name", "name"]


BAD = [
    ({"name": "x", "optimizer": {}}, "unknown key 'optimizer'"),
    ({"name": "x", "loss": {"gama": 2}}, "unknown key 'loss.gama'"),
    ({"name": "x", "loss": {"name": "dice_fcl"}}, 'loss.name "dice_fcl" is not known; use one of dice_ce, dice_bce'),
    ({"name": "x", "loss": {"focal_gamma": 2}}, "loss.focal_gamma applies to dice_focal, not dice_ce"),
    ({"name": "x", "loss": {"patterns_dice": "cubic"}}, 'loss.patterns_dice "cubic" is not known; use one of log, linear'),
    ({"name": "x", "loss": {"weights": {"enhancing tumour": -1}}}, "loss.weights = "),
    ({"name": "x", "optimiser": {"name": "adam"}}, 'optimiser.name "adam" is not known; use one of sgd, adamw'),
    ({"name": "x", "optimiser": {"name": "adamw", "momentum": 0.9}}, "optimiser.momentum does not apply to adamw"),
    ({"name": "x", "optimiser": {"lr": "fast"}}, 'optimiser.lr = "fast" is not valid; e.g. "lr": 0.01'),
    ({"name": "x", "schedule": {"name": "poly", "warmup": 0.1}}, "schedule.warmup does not apply to poly"),
    ({"name": "x", "deep_supervision": "quartering"}, 'deep_supervision "quartering" is not known'),
    ({"name": "x", "deep_supervision": [0, 1]}, "deep_supervision = [0, 1] is not valid"),
    ({"name": "x", "foreground": {"share": 1.5}}, "foreground.share = 1.5 is not valid"),
    ({"name": "x", "foreground": {"mode": "case"}}, 'foreground.mode "case" is not known; use one of batch, sample'),
    ({"name": "x", "accumulation": 0}, "accumulation = 0 is not valid"),
    ({"name": "x", "epochs": 1.5}, "epochs = 1.5 is not valid"),
    ({"name": "x", "network": {"kwargs": {"width": 2}}}, "unknown key 'network.kwargs.width'"),
    ({"name": "x", "network": {"kwargs": {"max_features": "big"}}}, "network.kwargs.max_features = \"big\""),
    ({"name": "a__b"}, 'name = "a__b" is not valid'),
    ({"name": "nnunet", "accumulation": 2}, "is named 'nnunet' but differs from the default recipe (accumulation)"),
    ([1, 2], "the recipe must be a JSON object"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m[:40] for _, m in BAD])
def test_a_bad_recipe_file_is_one_line_naming_the_file_the_key_and_the_fix(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AutosegError) as e:
        load_recipe(str(path))
    text = str(e.value)
    assert message in text and text.startswith(str(path)) and "\n" not in text and "; " in text, text


def test_recipe_lookup_errors_name_the_fix(tmp_path):
    with pytest.raises(AutosegError, match="no such recipe.*use one of nnunet, attention-unet"):
        load_recipe("nosuch")
    (tmp_path / "syntax.json").write_text("{'name': 1}")
    with pytest.raises(AutosegError, match="not a readable JSON recipe.*fix the JSON syntax"):
        load_recipe(str(tmp_path / "syntax.json"))
    with pytest.raises(AutosegError, match="recipe file not found"):
        load_recipe(str(tmp_path / "absent.json"))


def test_overrides_replace_single_fields_and_are_checked_like_a_file():
    r = load_recipe("segresnet").with_overrides(epochs=5, lr=0.5, dice="linear", foreground=0.66,
                                                foreground_mode="sample", accumulation=3)
    assert (r.epochs, r.optimiser.lr, r.loss.dice, r.foreground.share, r.foreground.mode, r.accumulation) == \
        (5, 0.5, "linear", 0.66, "sample", 3)
    assert r.optimiser.name == "adamw" and r.name == "segresnet"
    assert Recipe().with_overrides(epochs=None) == Recipe()
    with pytest.raises(AutosegError, match="loss.dice"):
        Recipe().with_overrides(dice="cubic")


def test_the_network_part_overrides_the_plans_network_and_keeps_its_topology():
    plan = tiny_plan(features=(32, 64, 128, 256, 320)).network
    n = network_plan(plan, load_recipe("nnunet-256").network)
    assert n.features == [32, 64, 128, 256, 256] and n.strides == plan.strides and n.arch == "unet"
    r = network_plan(plan, load_recipe("resunet-8gb").network)
    assert r.arch == "resenc_unet" and r.n_conv_encoder == [1, 2, 2, 2, 2] and r.n_conv_decoder == [1] * 4
    assert network_plan(plan, Recipe().network) == plan


def test_a_checkpoint_from_before_recipes_reads_as_the_default_recipe_with_its_options():
    legacy = {"options": {"epochs": 50, "iters_per_epoch": 250, "lr": 0.01, "momentum": 0.99, "nesterov": True,
                          "weight_decay": 3e-5, "poly_exponent": 0.9, "oversample": None}}
    r = recipe_of_checkpoint(legacy, "ckpt.pt")
    assert r.name == "nnunet" and r.loss.dice == "linear" and r.epochs == 50   # no "dice": it trained 1 - Dice
    assert r.differences(Recipe()) == [("loss.dice", "linear", "log"), ("loss.patterns", False, True)]
    assert recipe_of_checkpoint({"options": {**legacy["options"], "dice": "log"}}, "x").differences(Recipe()) == \
        [("loss.patterns", False, True)]                                          # nor the patterns' term


# ---- the parts ----------------------------------------------------------------------------------------
def test_focal_loss_matches_its_definition_and_is_cross_entropy_at_gamma_0():
    logits = torch.tensor([[[2.0, -1.0, 0.5]], [[-0.3, 0.8, -2.0]]]).view(2, 1, 3)   # (b, c=1, voxels)
    target = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]]).view(2, 1, 3)
    p = torch.sigmoid(logits)
    pt = torch.where(target > 0, p, 1 - p)
    want = (-(1 - pt) ** 2 * torch.log(pt)).mean()
    assert binary_cross_entropy(logits, target, gamma=2.0).item() == pytest.approx(want.item(), rel=1e-6)
    assert binary_cross_entropy(logits, target, gamma=0.0).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-6)
    # softmax focal: -(1 - p_y)^gamma log p_y, mean over voxels
    logits3 = torch.tensor([[[1.0, 0.2], [0.1, 2.0], [-1.0, 0.3]]])     # (b=1, c=3, voxels=2)
    idx = torch.tensor([[0, 2]])
    logp = torch.log_softmax(logits3, 1)
    lp = torch.stack([logp[0, 0, 0], logp[0, 2, 1]])
    assert cross_entropy(logits3, idx, gamma=2.0).item() == pytest.approx((-(1 - lp.exp()) ** 2 * lp).mean().item())
    assert cross_entropy(logits3, idx, gamma=0.0).item() == pytest.approx(F.cross_entropy(logits3, idx).item())
    w = torch.tensor([1.0, 1.0, 3.0])
    assert cross_entropy(logits3, idx, w, gamma=2.0).item() == pytest.approx(
        ((-(1 - lp.exp()) ** 2 * lp) * torch.tensor([1.0, 3.0])).sum().item() / 4)


def test_region_weights_weigh_dice_and_cross_entropy_and_equal_weights_change_nothing():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4)
    target = (torch.rand(2, 3, 4, 4, 4) > 0.6).float()
    plain = segmentation_loss(True, False, "log")(logits, target)
    ones = segmentation_loss(True, False, "log", weights=[1.0, 1.0, 1.0])(logits, target)
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)
    # all weight on region 2 = the loss of region 2 alone
    only = segmentation_loss(True, False, "log", weights=[0.0, 0.0, 1.0])(logits, target)
    alone = segmentation_loss(True, False, "log")(logits[:, 2:], target[:, 2:])
    assert only.item() == pytest.approx(alone.item(), rel=1e-5)


def test_the_recipe_loss_checks_names_against_the_dataset():
    regions = DatasetInfo.from_dict({"channel_names": {"0": "a"}, "labels": {"background": 0, "whole tumour": [1, 2],
                                     "enhancing tumour": 2}, "regions_class_order": [1, 2], "numTraining": 1,
                                     "file_ending": ".nii.gz"})
    labels = DatasetInfo.from_dict({"channel_names": {"0": "a"}, "labels": {"background": 0, "tumour": 1},
                                    "numTraining": 1, "file_ending": ".nii.gz"})
    r = load_recipe("segresnet").loss
    assert recipe_loss(r, regions, False).weights.tolist() == [1.0, 2.0]
    with pytest.raises(AutosegError, match="loss.weights names 'enhancing tumour'.*use its regions or labels: tumour"):
        recipe_loss(r, labels, False, "segresnet.json")
    with pytest.raises(AutosegError, match="dice_bce needs a region-based dataset"):
        recipe_loss(replace(r, name="dice_bce", weights={}), labels, False)


def test_warmup_cosine_rises_linearly_then_falls_as_a_cosine():
    assert warmup_epochs(0.05, 100) == 5 and warmup_epochs(0.05, 10) == 1 and warmup_epochs(0.0, 100) == 0
    lrs = [warmup_cosine_lr(e, 100, 1e-3, 0.05) for e in range(100)]
    assert lrs[:6] == pytest.approx([1e-3 / 6, 2e-3 / 6, 3e-3 / 6, 4e-3 / 6, 5e-3 / 6, 1e-3])
    assert lrs[5 + 95 // 2] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 47 / 95)))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:])) and lrs[-1] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 94 / 95)))
    assert warmup_cosine_lr(100, 100, 1e-3, 0.05, min_lr=1e-5) == pytest.approx(1e-5)
    assert epoch_lr(Recipe().schedule, 500, 1000, 0.01) == pytest.approx(0.01 * 0.5 ** 0.9)   # poly as before
    assert epoch_lr(load_recipe("segresnet").schedule, 5, 100, 1e-4) == pytest.approx(1e-4)


def _maker(share: float, mode: str, batch: int = 2) -> BatchMaker:
    return BatchMaker(None, [], None, (8, 8, 8), None, batch, tuple(range(batch)), share, False, 0, mode)


def test_per_sample_foreground_gives_the_share_asked_for_at_batch_2():
    n = 3000
    keys = [BatchKey("train", e, i) for e in range(30) for i in range(n // 30)]
    for share in (0.33, 0.5, 0.66):   # per batch (nnU-Net): always exactly one of two, whatever the share
        assert all(not _maker(share, "batch").forced_foreground(k, 0) and _maker(share, "batch").forced_foreground(k, 1)
                   for k in keys[:50])
    for share in (0.33, 0.66):
        m = _maker(share, "sample")
        forced = np.array([[m.forced_foreground(k, j) for j in range(2)] for k in keys])
        sd = np.sqrt(share * (1 - share) / n)
        assert abs(forced[:, 0].mean() - share) < 4 * sd and abs(forced[:, 1].mean() - share) < 4 * sd
        assert abs(forced.all(1).mean() - share ** 2) < 0.04            # the two samples are independent
        assert forced.tolist() == [[m.forced_foreground(k, j) for j in range(2)] for k in keys]   # a function of the key


def test_accumulated_batches_step_like_one_batch_of_all_their_samples():
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2, 2)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((4, 2, 2, 2, 2)).astype(np.float32)

    def step(batches):
        torch.manual_seed(0)
        net = nn.Conv3d(3, 2, 1)   # linear in its input
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        loss = train_step(net, lambda out, t: ((out - t) ** 2).mean(), opt, scaler, batches, torch.device("cpu"),
                          1e9, None)
        return loss, [p.detach().clone() for p in net.parameters()]

    big_loss, big = step(Batch(x, y))
    acc_loss, acc = step([Batch(x[:2], y[:2]), Batch(x[2:], y[2:])])
    assert acc_loss == pytest.approx(big_loss, rel=1e-6)
    for a, b in zip(acc, big):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    one_loss, one = step([Batch(x[:2], y[:2])])   # one batch of two: not the same step
    assert not torch.allclose(one[0], big[0])


def test_explicit_deep_supervision_weights_weigh_each_output_and_the_rest_stay_in_the_graph():
    assert deep_supervision_weights(4, [1, 0.5, 0.25]) == [1.0, 0.5, 0.25, 0.0]
    assert deep_supervision_weights(3, "off") == [1.0, 0.0, 0.0]
    with pytest.raises(AutosegError, match="3 weights, but the network has 2 output"):
        deep_supervision_weights(2, [1, 0.5, 0.25])
    torch.manual_seed(0)
    outs = [torch.randn(1, 2, 8, 8, 8, requires_grad=True), torch.randn(1, 2, 4, 4, 4, requires_grad=True),
            torch.randn(1, 2, 2, 2, 2, requires_grad=True)]
    target = (torch.rand(1, 2, 8, 8, 8) > 0.5).float()
    base = segmentation_loss(True, False)
    loss = DeepSupervisionLoss(base, True, [1.0, 0.5])(outs, target)
    want = base(outs[0], target) + 0.5 * base(outs[1], F.max_pool3d(target, 2, 2))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    assert outs[2].grad is not None and not outs[2].grad.any() and outs[1].grad.any()
    off = DeepSupervisionLoss(base, True, "off")(outs, target)
    assert off.item() == pytest.approx(base(outs[0], target).item(), rel=1e-6)


def test_list_recipes_prints_one_line_each(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--list-recipes"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert e.value.code == 0 and [ln.split()[0] for ln in lines] == list(shipped_recipes())
    assert len(lines) == len(list(RECIPES_DIR.glob("*.json"))) and "(default)" in lines[0]


def test_every_shipped_recipe_is_package_data():
    """The recipes are files of the package (importlib.resources finds them where the module is), not of the
    source tree: an install that is not editable lists and loads every one, not only the built-in default."""
    from importlib.resources import files

    import autoseg
    found = sorted(p.name.removesuffix(".json") for p in files("autoseg").joinpath("recipe_files").iterdir()
                   if p.name.endswith(".json"))
    assert found == sorted(SHIPPED) and RECIPES_DIR.parent == Path(autoseg.__file__).resolve().parent
    assert sorted(shipped_recipes()) == sorted(SHIPPED)


@pytest.mark.slow
def test_a_wheel_ships_and_loads_every_recipe(tmp_path):
    """Build the wheel from a copy of the sources, unpack it away from the source tree and list the recipes
    with the unpacked package: all five (before, a wheel had only the default, built in)."""
    import subprocess
    import zipfile
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(root / "autoseg", src / "autoseg", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    build = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = tmp_path / "dist" / done.stdout.split()[-1]
    with zipfile.ZipFile(wheel) as zf:
        shipped = sorted(n for n in zf.namelist() if n.startswith("autoseg/recipe_files/"))
        zf.extractall(tmp_path / "site")
    assert shipped == sorted(f"autoseg/recipe_files/{n}.json" for n in SHIPPED)
    listed = subprocess.run([sys.executable, "-c", "import autoseg.recipes as r; print(r.RECIPES_DIR); "
                             "print(' '.join(r.load_recipe(n).name for n in r.shipped_recipes()))"],
                            cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""}, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    where, names = listed.stdout.splitlines()
    assert Path(where).is_relative_to(tmp_path / "site") and sorted(names.split()) == sorted(SHIPPED)


def test_the_configuration_and_fold_are_still_required(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["3d_fullres"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "configuration and the fold are required" in err and len(err.splitlines()) == 1


def test_results_folders_default_recipe_keeps_the_configurations_name():
    assert run_folder_name("3d_fullres") == run_folder_name("3d_fullres", "nnunet") == "3d_fullres"
    assert run_folder_name("3d_fullres", "segresnet") == "segresnet__3d_fullres"


# ---- training with recipes ----------------------------------------------------------------------------
FAST = dict(iters_per_epoch=3, val_iters=1, workers=0, progress=False, validate=False)
# The same tiny fold trained by the code before recipes existed (commit c7e1299, 2 epochs x 3 iterations,
# seed 0): its logged losses, identical on 1 and 2 threads. The weights agreed to the last bit on the same thread
# count; the default recipe must reproduce them.
BEFORE_RECIPES = {"train_loss": [4.67255965868632, 4.037397623062134],
                  "val_loss": [3.784824848175049, 3.531686305999756]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return build_home(tmp_path_factory.mktemp("recipes") / "home", [tiny_plan()])


def _ckpt(fold_dir: Path, name: str = "checkpoint_final.pt") -> dict:
    return load_checkpoint(fold_dir / name)


@pytest.mark.slow
def test_the_default_recipe_trains_what_training_did_before_recipes(prepared, tmp_path):
    """The default recipe and the shipped nnunet.json train the same weights; without the label patterns' term
    (added after recipes, loss.patterns) it is what training did before recipes existed."""
    a = train_fold(copy_home(prepared, tmp_path / "a"), "3d_fullres", 0, TrainOptions(epochs=2, **FAST))
    b = train_fold(copy_home(prepared, tmp_path / "b"), "3d_fullres", 0,
                   TrainOptions(recipe=load_recipe("nnunet"), epochs=2, **FAST))
    before = replace(Recipe(), loss=replace(Recipe().loss, patterns=False))
    c = train_fold(copy_home(prepared, tmp_path / "c"), "3d_fullres", 0, TrainOptions(recipe=before, epochs=2, **FAST))
    ca, cb, cc = _ckpt(a), _ckpt(b), _ckpt(c)
    assert a.parent.name == "3d_fullres"                       # results/DATASET/CONFIG/fold_0, as before
    assert cc["log"]["train_loss"] == pytest.approx(BEFORE_RECIPES["train_loss"], rel=1e-6)
    assert cc["log"]["val_loss"] == pytest.approx(BEFORE_RECIPES["val_loss"], rel=1e-6)
    assert ca["log"]["train_loss"] != pytest.approx(BEFORE_RECIPES["train_loss"], rel=1e-3)   # the patterns' term
    for k, v in ca["network_state"].items():
        assert torch.equal(v, cb["network_state"][k]), k
    assert ca["recipe"] == Recipe().with_overrides(epochs=2, iters_per_epoch=3).to_dict()
    assert ca["network"] == ca["configuration"]["network"]


def test_a_checkpoint_from_before_the_patterns_term_counts_as_trained_without_it():
    stored = Recipe().to_dict()
    del stored["loss"]["patterns"]
    assert recipe_of_checkpoint({"recipe": stored}, "old.pt").loss.patterns is False
    assert recipe_of_checkpoint({"recipe": Recipe().to_dict()}, "new.pt").loss.patterns is True
    assert recipe_of_checkpoint({"options": {}}, "older.pt").loss.patterns is False


def test_a_checkpoint_from_before_patterns_dice_trained_the_patterns_with_its_own_dice_form():
    for form in ("log", "linear"):
        stored = replace(Recipe(), loss=replace(Recipe().loss, dice=form)).to_dict()
        del stored["loss"]["patterns_dice"]
        assert recipe_of_checkpoint({"recipe": stored}, "old.pt").loss.patterns_dice == form
    assert parse_recipe({"name": "r", "loss": {"dice": "linear"}}, "r.json").loss.patterns_dice == "log"


def _recipe_file(folder: Path, **changes) -> Path:
    """A non-default recipe on the plan's unet: focal loss, AdamW, warm-up cosine, 2 DS weights, per-sample
    foreground, 2 batches per step."""
    d = {"name": "mine", "description": "test", "network": {"arch": "unet"},
         "loss": {"name": "dice_focal", "weights": {"enhancing tumour": 2.0}, "focal_gamma": 2.0},
         "optimiser": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "warmup_cosine", "warmup": 0.3},
         "deep_supervision": [1.0, 0.5], "foreground": {"share": 0.66, "mode": "sample"}, "accumulation": 2,
         "epochs": 3, "iters_per_epoch": 2}
    d.update(changes)
    path = folder / "mine.json"
    path.write_text(json.dumps(d))
    return path


CLI = ["--val-iters", "1", "--workers", "0", "--device", "cpu", "--no-validation", "--precision", "fp32"]


def _train(home: Path, *args: str) -> int:
    with pytest.raises(SystemExit) as e:
        train_main(["3d_fullres", "fold0", "--home", str(home), *CLI, *args])
    return e.value.code


@pytest.mark.slow
def test_a_non_default_recipe_trains_resumes_exactly_and_predicts_from_its_own_folder(prepared, tmp_path, capsys,
                                                                                       monkeypatch):
    recipe = _recipe_file(tmp_path)
    straight = copy_home(prepared, tmp_path / "a")
    assert _train(straight.root, "--recipe", str(recipe)) == 0
    fold = straight.fold_dir("3d_fullres", 0, "mine")
    assert fold.parent.name == "mine__3d_fullres" and not straight.fold_dir("3d_fullres", 0).exists()
    ca = _ckpt(fold)
    assert ca["recipe"]["loss"]["name"] == "dice_focal" and ca["recipe"]["accumulation"] == 2
    lr = 0.003
    assert ca["log"]["lr"] == pytest.approx([lr / 2, lr, lr * 0.5 * (1 + np.cos(np.pi / 2))])
    assert isinstance(ca["optimizer_state"]["state"][0].get("exp_avg"), torch.Tensor)   # AdamW's state
    assert "recipe mine" in (fold / "log.txt").read_text()

    # the same run stopped during its second epoch (the schedule depends on the total epochs: not a shorter run)
    resumed = copy_home(prepared, tmp_path / "b")
    real = trainer.run_epoch

    def stop_at_epoch_1(epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(epoch, *args, **kwargs)
    monkeypatch.setattr(trainer, "run_epoch", stop_at_epoch_1)
    assert _train(resumed.root, "--recipe", str(recipe)) == 130
    monkeypatch.undo()
    assert _ckpt(resumed.fold_dir("3d_fullres", 0, "mine"), "checkpoint_latest.pt")["epoch"] == 1
    assert _train(resumed.root, "--recipe", str(recipe), "--resume") == 0
    cb = _ckpt(resumed.fold_dir("3d_fullres", 0, "mine"))
    assert ca["log"]["train_loss"] == cb["log"]["train_loss"]
    for k, v in ca["network_state"].items():
        assert torch.equal(v, cb["network_state"][k]), k

    # predict from the recipe's folder; everything is rebuilt from the checkpoint
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in sorted((straight.raw / "imagesTr").iterdir())[:4]:
        shutil.copy(f, inputs / f.name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        predict_main(["-i", str(inputs), "-o", str(tmp_path / "out"), "--home", str(straight.root), "--recipe", "mine",
                      "-f", "0", "--no-tta", "--device", "cpu", "--precision", "fp32"])
    assert e.value.code == 0 and len(list((tmp_path / "out").glob("*.nii.gz"))) == 1
    with pytest.raises(SystemExit) as e:   # the default recipe has no trained fold here
        predict_main(["-i", str(inputs), "-o", str(tmp_path / "out2"), "--home", str(straight.root), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no trained fold" in err and "Traceback" not in err


def test_resuming_with_another_recipe_or_a_changed_one_is_one_line_naming_the_checkpoint(prepared, tmp_path, capsys):
    home = copy_home(prepared, tmp_path / "h")
    recipe = _recipe_file(tmp_path, accumulation=1, epochs=1, iters_per_epoch=1)
    assert _train(home.root, "--recipe", str(recipe)) == 0
    ckpt = home.fold_dir("3d_fullres", 0, "mine") / "checkpoint_latest.pt"
    capsys.readouterr()
    _recipe_file(tmp_path, accumulation=1, epochs=1, iters_per_epoch=1, loss={"name": "dice_ce"})   # edited
    assert _train(home.root, "--recipe", str(recipe), "--epochs", "2", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"autoseg-train: error: {ckpt}: was trained with loss.") and len(err.splitlines()) == 1
    assert "resume with the recipe as it was" in err
    # a fold folder of another recipe copied into this recipe's place
    shutil.copytree(home.fold_dir("3d_fullres", 0, "mine"), home.fold_dir("3d_fullres", 0, "other"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "other", "epochs": 2, "iters_per_epoch": 1}))
    assert _train(home.root, "--recipe", str(other), "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "was trained with recipe mine, not other; resume with --recipe mine" in err and len(err.splitlines()) == 1
    # ... and predicted from there: the checkpoint names the recipe it was trained with
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in sorted((home.raw / "imagesTr").iterdir())[:4]:
        shutil.copy(f, inputs / f.name)
    with pytest.raises(SystemExit) as e:
        predict_main(["-i", str(inputs), "-o", str(tmp_path / "out"), "--home", str(home.root), "--recipe", "other",
                      "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert (f"{home.fold_dir('3d_fullres', 0, 'other') / 'checkpoint_final.pt'}: checkpoint was trained with recipe "
            "mine, but lies in the folder of recipe other; use --recipe mine") in err
    # an override that changes the recipe names its option
    _recipe_file(tmp_path, accumulation=1, epochs=1, iters_per_epoch=1)
    assert _train(home.root, "--recipe", str(recipe), "--epochs", "2", "--resume", "--dice", "linear") == 2
    assert "resume with --dice log" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    ({"network": {"arch": "transformer9000"}}, "network.arch 'transformer9000' is not a known network"),
    ({"loss": {"name": "dice_bce", "weights": {"necrosis": 1.0}}}, "loss.weights names 'necrosis'"),
    ({"optimiser": {"name": "rmsprop"}}, 'optimiser.name "rmsprop" is not known'),
    ({"warmup": 1}, "unknown key 'warmup'"),
    ({"loss": {"name": "dice_fcl"}}, 'loss.name "dice_fcl" is not known; use one of dice_ce, dice_bce'),
])
def test_bad_recipe_input_through_the_command_is_one_line_and_exit_2(prepared, tmp_path, capsys, change, message):
    home = copy_home(prepared, tmp_path / "h")
    recipe = _recipe_file(tmp_path, **change)
    capsys.readouterr()
    assert _train(home.root, "--recipe", str(recipe)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"autoseg-train: error: {recipe}: ") and message in err and len(err.splitlines()) == 1, err
    assert not home.fold_dir("3d_fullres", 0, "mine").exists() or not any(home.fold_dir("3d_fullres", 0, "mine").iterdir())
    assert _train(home.root, "--recipe", "nosuch") == 2
    assert "--recipe nosuch: no such recipe" in capsys.readouterr().err


def test_a_recipe_network_too_big_for_the_gpu_is_one_line_through_the_command(prepared, tmp_path, capsys,
                                                                                monkeypatch):
    """autoseg-train --recipe nnunet-256 on a (mocked) GPU of 1 MiB: refused before anything runs on it, in one
    line naming the recipe file and the fix; the plan's own network is not checked (the planner sized it)."""
    from types import SimpleNamespace
    home = copy_home(prepared, tmp_path / "h")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=2 ** 20))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train_main(["3d_fullres", "fold0", "--home", str(home.root), "--workers", "0", "--device", "cuda",
                    "--recipe", "nnunet-256"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"autoseg-train: error: {RECIPES_DIR / 'nnunet-256.json'}: network unet of recipe nnunet-256 "
                          "needs about") and "autoseg-plan --vram GB" in err
    assert not home.fold_dir("3d_fullres", 0, "nnunet-256").is_dir() or not any(
        home.fold_dir("3d_fullres", 0, "nnunet-256").glob("checkpoint_*.pt"))


# ---- the comparison benchmark (its arguments and dry mode only: the real run is the lead's) -------------
def test_the_recipes_benchmark_gives_every_recipe_one_budget_of_batches_and_dry_run_runs_nothing(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recipes_table

    a = recipes_table.parse_args(["run", "--work", str(tmp_path / "w"), "--batches", "40", "--epochs", "2"])
    assert (a.what, a.batches, a.epochs, a.recipes, a.dry_run) == ("run", 40, 2, None, False)
    with pytest.raises(SystemExit):
        recipes_table.parse_args(["run", "--work", "w", "--batches", "0"])
    with pytest.raises(SystemExit):
        recipes_table.parse_args(["compare", "--work", "w"])
    recipes_table.main(["run", "--work", str(tmp_path / "w"), "--batches", "40", "--epochs", "2", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    trains = [ln.split() for ln in lines if " train: " in ln]
    assert [t[0] for t in trains] == shipped_recipes() and len(lines) == 2 * len(SHIPPED)
    steps = {t[0]: int(t[t.index("--iters-per-epoch") + 1]) * load_recipe(t[0]).accumulation for t in trains}
    assert set(steps.values()) == {20} and steps["resunet-8gb"] // 2 == 10   # 40 batches over 2 epochs, each
    assert all(t[t.index("--recipe") + 1] == t[0] for t in trains)
    predicts = [ln for ln in lines if " predict: " in ln]
    assert all(f"--recipe {p.split()[0]}" in p and "-f all" in p for p in predicts)
    assert not (tmp_path / "w").exists()
    with pytest.raises(SystemExit, match="too few for 2 epochs of recipe resunet-8gb"):
        recipes_table.main(["run", "--work", "w", "--batches", "3", "--epochs", "2", "--dry-run",
                            "--recipes", "resunet-8gb"])


def test_a_network_that_does_not_fit_the_gpu_is_refused_naming_the_recipe():
    from autoseg.training.trainer import check_fits
    plan = tiny_plan()
    info = DatasetInfo.from_dict({"channel_names": {str(i): str(i) for i in range(4)}, "labels": {
        "background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing tumour": 3},
        "regions_class_order": [1, 2, 3], "numTraining": 1, "file_ending": ".nii.gz"})
    recipe = replace(load_recipe("nnunet-256"), source="autoseg/recipe_files/nnunet-256.json")
    net = network_plan(plan.network, recipe.network)
    check_fits(recipe, net, plan, info, 2 ** 40, True)
    with pytest.raises(AutosegError, match=r"^autoseg/recipe_files/nnunet-256.json: network unet of recipe nnunet-256 needs "
                                           r"about .* GiB for patch 16x16x16, batch 2; this GPU has 0.0 GiB.*--vram"):
        check_fits(recipe, net, plan, info, 2 ** 20, True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["segresnet", "attention-unet"])
def test_the_monai_recipes_train_and_predict(prepared, tmp_path, name):
    pytest.importorskip("monai")
    home = copy_home(prepared, tmp_path / "h")
    assert _train(home.root, "--recipe", name, "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "0") == 0
    ckpt = _ckpt(home.fold_dir("3d_fullres", 0, name))
    assert ckpt["epoch"] == 1 and ckpt["network"]["arch"] == load_recipe(name).network.arch
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in sorted((home.raw / "imagesTr").iterdir())[:4]:
        shutil.copy(f, inputs / f.name)
    with pytest.raises(SystemExit) as e:
        predict_main(["-i", str(inputs), "-o", str(tmp_path / "out"), "--home", str(home.root), "--recipe", name,
                      "--no-tta", "--device", "cpu", "--precision", "fp32"])
    assert e.value.code == 0 and len(list((tmp_path / "out").glob("*.nii.gz"))) == 1
