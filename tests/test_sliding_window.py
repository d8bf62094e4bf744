"""Sliding-window prediction: exact stitching, padding, mirroring, 2d slice mode, window placement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoseg.inference.sliding_window import (compute_steps, gaussian_importance, mirror_combinations,
                                              predict_sliding_window, sliding_window_logits)


def _pointwise(in_ch: int, out_ch: int, ndim: int = 3, seed: int = 0) -> nn.Module:
    """A 1x1 conv net: translation- and flip-equivariant, so stitched output must equal one full pass."""
    torch.manual_seed(seed)
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return nn.Sequential(conv(in_ch, 8, 1), nn.Tanh(), conv(8, out_ch, 1))


class _Ramp(nn.Module):
    """Output = a fixed ramp along the last axis, whatever the input: not mirror-equivariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, x.shape[-1])
        return x[:, :1] * 0 + ramp


@pytest.mark.parametrize("shape", [(14, 21, 19), (7, 10, 11)])  # larger than, and smaller than, the patch
def test_stitching_equals_full_pass(shape: tuple[int, int, int]) -> None:
    net = _pointwise(4, 3).eval()
    data = torch.randn(4, *shape)
    with torch.no_grad():
        full = torch.sigmoid(net(data[None])[0])
    probs = predict_sliding_window(net, data, (8, 12, 12), 3, region_based=True, mirror_axes=(0, 1, 2), batch_size=12)
    assert probs.shape == (3, *shape)
    torch.testing.assert_close(probs, full, atol=1e-5, rtol=1e-5)


def test_softmax_and_2d_slice_mode() -> None:
    net = _pointwise(2, 4, ndim=2).eval()
    data = torch.randn(2, 3, 30, 21)
    with torch.no_grad():
        full = torch.softmax(net(data.permute(1, 0, 2, 3)), dim=1).permute(1, 0, 2, 3)
    probs = predict_sliding_window(net, data, (16, 16), 4, region_based=False, mirror_axes=(0, 1), batch_size=16)
    torch.testing.assert_close(probs, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(0), torch.ones(3, 30, 21))


def test_mirroring_only_over_the_given_axes() -> None:
    data = torch.randn(1, 8, 8, 16)
    ramp = torch.linspace(-1, 1, 16)
    kept = sliding_window_logits(_Ramp(), data, (8, 8, 16), 1, mirror_axes=(0, 1))
    torch.testing.assert_close(kept[0, 3, 5], ramp)
    # flipping the ramp axis and flipping the output back averages the ramp with its reverse: zero
    averaged = sliding_window_logits(_Ramp(), data, (8, 8, 16), 1, mirror_axes=(2,))
    torch.testing.assert_close(averaged[0, 3, 5], torch.zeros(16))


def test_windows_overlap_by_half_and_cover() -> None:
    assert compute_steps(131, 128, 0.5) == [0, 3]
    assert compute_steps(100, 128, 0.5) == [0]
    starts = compute_steps(300, 64, 0.5)
    assert starts[0] == 0 and starts[-1] == 300 - 64
    assert all(b - a <= 32 for a, b in zip(starts, starts[1:]))
    assert len(mirror_combinations((0, 1, 2))) == 8 and mirror_combinations(()) == [()]


def test_gaussian_peaks_in_the_centre() -> None:
    w = gaussian_importance((16, 9))
    assert w.max() == 1 and w.min() > 0
    assert w[7:9, 4].min() == w.max() and w[0, 0] == w.min()


def test_bf16_autocast_close_to_fp32() -> None:
    net = _pointwise(4, 3)
    data = torch.randn(4, 16, 20, 20)
    fp32 = predict_sliding_window(net, data, (16, 16, 16), 3, True)
    bf16 = predict_sliding_window(net, data, (16, 16, 16), 3, True, compute_dtype=torch.bfloat16)
    assert (fp32 - bf16).abs().max() < 0.02


def test_training_state_is_restored() -> None:
    net = _pointwise(1, 1).train()
    net.deep_supervision = True
    predict_sliding_window(net, torch.randn(1, 8, 8, 8), (8, 8, 8), 1, True)
    assert net.training and net.deep_supervision


def test_members_are_the_flips_and_average_to_the_default() -> None:
    members: list[torch.Tensor] = []
    data = torch.randn(1, 8, 8, 16)
    mean = sliding_window_logits(_Ramp(), data, (8, 8, 16), 1, mirror_axes=(2,),
                                 member=lambda m: members.append(m.clone()))
    ramp = torch.linspace(-1, 1, 16)
    assert len(members) == 2
    torch.testing.assert_close(members[0][0, 3, 5], ramp)          # no flip
    torch.testing.assert_close(members[1][0, 3, 5], ramp.flip(0))  # the ramp axis flipped back
    torch.testing.assert_close(mean, torch.zeros(1, 8, 8, 16))


@pytest.mark.parametrize("shape", [(11, 17, 14), (7, 10, 11)])   # 2 overlapping windows per axis; padded
def test_member_mean_equals_the_default_with_overlap_and_padding(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 3, 3, padding=1)).eval()
    data = torch.randn(2, *shape)
    count = []
    default = sliding_window_logits(net, data, (8, 12, 12), 3, mirror_axes=(0, 1, 2), batch_size=8)
    mean = sliding_window_logits(net, data, (8, 12, 12), 3, mirror_axes=(0, 1, 2), batch_size=8,
                                 member=lambda m: count.append(m.shape))
    assert count == [(3, *shape)] * 8
    torch.testing.assert_close(mean, default, atol=1e-6, rtol=1e-5)
