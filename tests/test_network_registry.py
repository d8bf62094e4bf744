"""The network registry: every built-in network against the trainer's contract (outputs, deep supervision,
region head, pretrained heads), the plan checks, MONAI as an optional extra, and the memory estimate
against a measured training step."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.inference.sliding_window import eval_mode
from autoseg.network import (
    adapt_network_plan,
    build_network,
    check_network_plan,
    count_parameters,
    estimate_memory,
    network_names,
    network_spec,
    output_layers,
    parameter_count,
    region_patterns,
)
from autoseg.network.memory import estimate_training_memory, traced_training_memory
from autoseg.plans import NetworkPlan
from autoseg.training.losses import DeepSupervisionLoss, segmentation_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from memory_calibrate import measure_training_step  # noqa: E402  (a benchmark tool, not part of the package)

BUILT_IN = ["unet", "resenc_unet", "segresnet", "attention_unet"]
BRATS = region_patterns([(1, 2, 4), (1, 4), (4,)], [1, 2, 4])   # 3 regions, 4 label patterns

# the planner's kind of topology in miniature: anisotropic first, then isotropic; and a 2d one
ANISO = NetworkPlan("unet", [4, 8, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                    [2] * 3, [2] * 2)
PLANE = NetworkPlan("unet", [4, 8, 16], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]], [2] * 3, [2] * 2)
PATCH = {3: [8, 16, 16], 2: [32, 32]}


def _digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("plan,plain,regions", [
    (NetworkPlan("unet", [4, 8, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                 [2, 2, 2], [2, 2]), "610496a5c0898489", "bcdef9fc96c0769c"),
    (NetworkPlan("resenc_unet", [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [1, 3, 4], [1, 1]),
     "7886af454a2c10fb", "71265417572d5b31"),
], ids=["unet", "resenc_unet"])
def test_built_in_unets_have_the_weights_they_had_before_the_registry(plan, plain, regions) -> None:
    """Digests of the state_dict at seed 0, taken from the U-Net before the registry existed (commit 38b2fce):
    same modules, same order, same initialisation, so trained checkpoints and seeds carry over."""
    torch.manual_seed(0)
    assert _digest(build_network(plan, 4, 3)) == plain
    torch.manual_seed(0)
    assert _digest(build_network(plan, 4, 3, region_membership=BRATS)) == regions


def test_every_built_in_is_registered_and_an_unknown_name_is_one_line() -> None:
    assert network_names()[:4] == BUILT_IN
    with pytest.raises(AutosegError, match=r"^recipe.json: unknown network 'vnet'; use one of unet, resenc_unet"):
        network_spec("vnet", "recipe.json")


@pytest.mark.parametrize("arch", BUILT_IN)
@pytest.mark.parametrize("base", [ANISO, PLANE], ids=["3d", "2d"])
def test_outputs_fit_the_deep_supervision_loss_and_the_region_head(arch, base) -> None:
    """Training mode: one tensor or a list, finest first, each level no finer than the one before, that the
    trainer's loss takes and every parameter learns from; eval mode: one full-size tensor. With the nested
    region head, region probabilities are nested (enhancing <= core <= whole) in every network, and in training
    mode the 4 pattern logits follow the 3 region logits (the loss's patterns term)."""
    plan = adapt_network_plan(base, arch)
    patch = PATCH[plan.ndim]
    torch.manual_seed(0)
    net = build_network(plan, 4, 3, deep_supervision=True, region_membership=BRATS)
    x = torch.randn(2, 4, *patch)
    net.train()
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    assert list(outs[0].shape) == [2, 3 + 4, *patch]
    for finer, coarser in zip(outs, outs[1:]):
        assert all(c <= f for c, f in zip(coarser.shape[2:], finer.shape[2:])) and coarser.shape[:2] == finer.shape[:2]
    if arch != "attention_unet":        # MONAI's AttentionUnet has no deep supervision
        assert len(outs) == plan.n_stages - 1
    target = (torch.rand(2, 3, *patch) > 0.7).float()
    DeepSupervisionLoss(segmentation_loss(region_based=True, batch_dice=False, patterns=BRATS),
                        region_based=True)(out, target).backward()
    assert all(p.grad is not None for p in net.parameters())
    p = torch.sigmoid(outs[0].detach())
    assert bool((p[:, 2] <= p[:, 1] + 1e-5).all() and (p[:, 1] <= p[:, 0] + 1e-5).all())
    net.eval()
    with torch.no_grad():
        single = build_network(plan, 4, 3, deep_supervision=False).eval()(x)
    assert isinstance(single, torch.Tensor) and list(single.shape) == [2, 3, *patch]


@pytest.mark.parametrize("arch", BUILT_IN)
def test_a_training_checkpoint_loads_into_the_prediction_network(arch) -> None:
    """What autoseg-predict does with a fold: the weights of the network trained with deep supervision load
    strictly into the one built without it, which gives the same eval output and one full-size tensor in
    training mode too (SegResNetDS once built its lower heads only with deep supervision: nothing loaded)."""
    plan = adapt_network_plan(ANISO, arch)
    patch = PATCH[plan.ndim]
    torch.manual_seed(0)
    trained = build_network(plan, 4, 3, deep_supervision=True, region_membership=BRATS)
    served = build_network(plan, 4, 3, deep_supervision=False, region_membership=BRATS)
    served.load_state_dict(trained.state_dict())
    x = torch.randn(1, 4, *patch)
    with torch.no_grad(), eval_mode(trained):
        assert torch.equal(served.eval()(x), trained(x))
        out = served.train()(x)
    assert isinstance(out, torch.Tensor) and list(out.shape) == [1, 3 + 4, *patch]   # + the patterns in training


@pytest.mark.parametrize("arch", BUILT_IN)
def test_parameter_count_and_output_layers_come_from_the_network_itself(arch) -> None:
    plan = adapt_network_plan(ANISO, arch)
    net = build_network(plan, 4, 3)
    assert parameter_count(plan, 4, 3) == count_parameters(net)
    heads = output_layers(plan, 4, 3)
    other = build_network(plan, 4, 5).state_dict()
    assert heads and heads == {k for k, v in net.state_dict().items() if other[k].shape != v.shape}


def test_adapted_plans_keep_the_pooling_and_say_what_monai_fixes() -> None:
    # the planner's strides end by leaving a short axis alone: MONAI's SegResNet cannot, so it stops a stage earlier
    unet = NetworkPlan("unet", [8, 16, 32, 64], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                       [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]], [2] * 4, [2] * 3)
    seg = adapt_network_plan(unet, "segresnet")
    assert seg.strides == unet.strides[:3] and seg.features == [8, 16, 32]
    assert seg.kernel_sizes == [[1, 3, 3], [3, 3, 3], [3, 3, 3]] and seg.n_conv_encoder == [1, 2, 2]
    att = adapt_network_plan(unet, "attention_unet")
    assert att.strides == unet.strides and att.kernel_sizes == [[3, 3, 3]] * 4 and att.n_conv_decoder == [1] * 3
    res = adapt_network_plan(unet, "resenc_unet")
    assert res.n_conv_encoder == [1, 3, 4, 6] and res.n_conv_decoder == [1] * 3
    assert adapt_network_plan(unet, "unet") is unet
    with pytest.raises(AutosegError, match="segresnet doubles the features"):
        check_network_plan(NetworkPlan(**{**seg.__dict__, "features": [8, 16, 16]}))
    with pytest.raises(AutosegError, match="attention_unet has one kernel size"):
        check_network_plan(NetworkPlan(**{**att.__dict__, "kernel_sizes": unet.kernel_sizes}))


def test_monai_networks_without_monai_are_one_line(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "monai" or m.startswith("monai.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "monai", None)   # import monai now raises ImportError
    plan = NetworkPlan("segresnet", [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [1, 2], [1])
    for arch in ("segresnet", "attention_unet"):
        with pytest.raises(AutosegError, match=rf"^network '{arch}' needs MONAI, which is not installed; "
                                               r"pip install 'autoseg\[monai\]'"):
            build_network(NetworkPlan(**{**plan.__dict__, "arch": arch}), 4, 3)
    build_network(adapt_network_plan(ANISO, "resenc_unet"), 4, 3)   # the built-in U-Nets need no MONAI


def test_traced_estimate_agrees_with_the_analytic_unet_model() -> None:
    """Two independent counts of what autograd saves for the same U-Net (cheap: the meta device)."""
    for base in (ANISO, PLANE):
        for arch in ("unet", "resenc_unet"):
            plan = adapt_network_plan(base, arch)
            patch = PATCH[plan.ndim]
            traced = traced_training_memory(lambda: network_spec(arch).build(plan, 4, 3, True), patch, 2, 4, True)
            analytic = estimate_training_memory(plan, patch, 2, 4, 3, True)
            assert abs(traced.activations / analytic.activations - 1) < 0.05, (arch, traced, analytic)
            assert traced.model_state == analytic.model_state


@pytest.mark.slow
@pytest.mark.parametrize("arch", BUILT_IN)
@pytest.mark.parametrize("base", [ANISO, PLANE], ids=["3d", "2d"])
@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "mixed"])
def test_memory_estimate_within_25_percent_of_a_measured_training_step(arch, base, mixed) -> None:
    """The planner's estimate of each registered network against the peak of live tensors in one real SGD step
    (forward, training's loss, backward, step; counted on CPU by benchmarks/memory_calibrate.py)."""
    plan = adapt_network_plan(base, arch)
    patch, batch = PATCH[plan.ndim], 2
    measured = measure_training_step(plan, patch, batch, 4, 3, mixed)
    for estimate in (estimate_memory(plan, patch, batch, 4, 3, mixed),
                     traced_training_memory(lambda: network_spec(arch).build(plan, 4, 3, True), patch, batch, 4, mixed)):
        assert abs(estimate.total / measured.peak_bytes - 1) < 0.25, (estimate, measured)
        assert abs(estimate.activations / measured.saved_activation_bytes - 1) < 0.25, (estimate, measured)
