"""The U-Nets built from network plans: output shapes, deep supervision, parameter count, init."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.network import (
    RegionLogits,
    build_network,
    check_network_plan,
    count_parameters,
    network_for_dataset,
    region_patterns,
)
from autoseg.plans import NetworkPlan


def plan(arch: str, features, strides, kernel=3, n_enc=None, n_dec=None) -> NetworkPlan:
    ndim = len(strides[0])
    n = len(features)
    return NetworkPlan(arch=arch, features=list(features), kernel_sizes=[[kernel] * ndim for _ in range(n)],
                       strides=[list(s) for s in strides], n_conv_encoder=n_enc or [2] * n,
                       n_conv_decoder=n_dec or [2] * (n - 1))


@pytest.mark.parametrize("arch", ["unet", "resenc_unet"])
@pytest.mark.parametrize("strides,size", [
    ([[1, 1, 1], [2, 2, 2], [1, 2, 2], [2, 2, 2]], (12, 24, 40)),   # anisotropic first stride, odd multiples
    ([[1, 1], [2, 2], [2, 2]], (20, 36)),
])
def test_output_shapes_deep_supervision(arch, strides, size):
    torch.manual_seed(0)
    p = plan(arch, [4, 8, 16, 16][: len(strides)], strides, n_enc=[1, 2, 2, 1][: len(strides)])
    net = build_network(p, in_channels=3, out_channels=2)
    x = torch.randn(2, 3, *size)
    out = net(x)
    assert isinstance(out, list) and len(out) == len(strides) - 1
    expected = list(size)
    for level, o in enumerate(out):
        assert list(o.shape) == [2, 2, *expected]
        expected = [e // s for e, s in zip(expected, strides[level + 1])]
    net.deep_supervision = False
    single = net(x)
    assert isinstance(single, torch.Tensor) and list(single.shape) == [2, 2, *size]
    assert torch.allclose(single, out[0], atol=1e-5)


def test_default_path_uses_every_parameter():
    """With deep supervision on (the default), every parameter receives a gradient (DDP needs no
    find_unused_parameters); with it off, only the coarse heads are unused."""
    p = plan("unet", [4, 8, 8], [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    net = build_network(p, 1, 2)
    sum(o.sum() for o in net(torch.randn(1, 1, 8, 8, 8))).backward()
    assert all(q.grad is not None for q in net.parameters())
    net.zero_grad(set_to_none=True)
    net.deep_supervision = False
    net(torch.randn(1, 1, 8, 8, 8)).sum().backward()
    unused = {n for n, q in net.named_parameters() if q.grad is None}
    assert unused == {"heads.1.weight", "heads.1.bias"}


def test_default_brats_plan_matches_nnunet_parameter_count():
    p = plan("unet", [32, 64, 128, 256, 320, 320], [[1, 1, 1]] + [[2, 2, 2]] * 5)
    n = count_parameters(build_network(p, in_channels=4, out_channels=3))
    assert abs(n / 31.2e6 - 1) < 0.01, n   # nnU-Net's PlainConvUNet for this plan: 31.2 M


def test_resenc_has_residual_blocks_and_more_parameters():
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    plain = build_network(plan("unet", [8, 16, 32], strides), 4, 3)
    res = build_network(plan("resenc_unet", [8, 16, 32], strides, n_enc=[1, 3, 4], n_dec=[1, 1]), 4, 3)
    assert sum(type(m).__name__ == "ResidualBlock" for m in res.modules()) == 8
    assert count_parameters(res) > count_parameters(plain)


def test_he_init_and_zero_bias():
    torch.manual_seed(0)
    net = build_network(plan("unet", [32, 64], [[1, 1, 1], [2, 2, 2]]), 32, 2)
    conv = net.encoder[1][1][0]   # 64 -> 64, 3x3x3
    fan_in = 64 * 27
    expected_std = (2.0 / (1 + 0.01 ** 2) / fan_in) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("bad", [
    dict(arch="vnet"),
    dict(strides=[[1, 1, 1], [2, 2, 2]]),
    dict(n_conv_decoder=[2, 2, 2]),
    dict(kernel_sizes=[[3, 3], [3, 3, 3], [3, 3, 3]]),
    dict(features=[4, 0, 16]),
])
def test_inconsistent_plans_are_refused(bad):
    good = plan("unet", [4, 8, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    with pytest.raises(AutosegError, match="rerun autoseg-plan"):
        check_network_plan(NetworkPlan(**{**good.__dict__, **bad}))


# ---- nested region outputs ------------------------------------------------------------------------

BRATS_REGIONS = [(1, 2, 4), (1, 4), (4,)]


def test_region_patterns_are_the_distinct_memberships_with_background_first() -> None:
    m = region_patterns(BRATS_REGIONS, [0, 1, 2, 4])
    # patterns: background, necrosis (WT+TC), oedema (WT only), enhancing (all three)
    assert m.tolist() == [[False, True, True, True], [False, True, False, True], [False, False, False, True]]
    # labels with the same membership share one pattern; a label in no region is background
    assert region_patterns([(1, 2), (3,)], [0, 1, 2, 3, 7]).tolist() == [[False, True, False], [False, False, True]]


def test_region_logits_are_logits_of_summed_pattern_probabilities_and_nested() -> None:
    m = region_patterns(BRATS_REGIONS, [0, 1, 2, 4])
    z = torch.randn(2, 4, 5, 6, 7) * 8
    p = torch.softmax(z, 1)
    regions = torch.sigmoid(RegionLogits(m)(z))
    for r in range(3):
        torch.testing.assert_close(regions[:, r], p[:, m[r]].sum(1), atol=1e-6, rtol=1e-5)
    assert (regions[:, 0] >= regions[:, 1] - 1e-6).all() and (regions[:, 1] >= regions[:, 2] - 1e-6).all()
    assert torch.isfinite(RegionLogits(m)(torch.tensor([[0.0, -200.0, -200.0, 200.0]]))).all()


def test_network_for_dataset_follows_the_plans_region_head() -> None:
    from autoseg.dataset import DatasetInfo

    info = DatasetInfo.from_dict({"name": "x", "channel_names": {"0": "a"}, "file_ending": ".nii.gz",
                                  "numTraining": 1, "regions_class_order": [2, 1, 4],
                                  "labels": {"background": 0, "wt": [1, 2, 4], "tc": [1, 4], "et": 4}})
    p = plan("unet", [4, 8], [[1, 1, 1], [2, 2, 2]])
    softmax = network_for_dataset(p, info)
    sigmoid = network_for_dataset(NetworkPlan(**{**p.__dict__, "region_head": "sigmoid"}), info)
    assert softmax.heads[0].out_channels == 4 and sigmoid.heads[0].out_channels == 3
    x = torch.randn(1, 1, 8, 8, 8)
    assert [o.shape[1] for o in sigmoid(x)] == [3]
    assert [o.shape[1] for o in softmax(x)] == [3 + 4]      # training: the regions, then the patterns' logits
    softmax.eval()
    assert [o.shape[1] for o in softmax(x)] == [3]          # validation and inference: the regions
    assert set(softmax.state_dict()) == set(sigmoid.state_dict())  # the read-out adds no weights
    with pytest.raises(AutosegError, match="region_head"):
        network_for_dataset(NetworkPlan(**{**p.__dict__, "region_head": "argmax"}), info)


def test_plans_without_region_head_are_legacy_sigmoid_and_keep_their_checkpoint_hash() -> None:
    from dataclasses import asdict

    from autoseg.checkpoint import plan_hash

    p = plan("unet", [4, 8], [[1, 1, 1], [2, 2, 2]])
    legacy = {k: v for k, v in asdict(p).items() if k != "region_head"}
    loaded = NetworkPlan.from_dict(legacy)
    assert loaded.region_head == "sigmoid"
    assert plan_hash({"network": legacy}) == plan_hash({"network": asdict(loaded)})
    assert plan_hash({"network": asdict(p)}) != plan_hash({"network": asdict(loaded)})
