"""Overlay PNGs and the HTML report."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from autoseg.errors import AutosegError
from autoseg.report import summary_html, write_report_html
from autoseg.synthetic import make_case
from autoseg.visualize import pick_slices, save_overlay_png


@pytest.fixture(scope="module")
def case():
    return make_case((32, 48, 48), seed=1)


def test_pick_slices_lie_in_the_tumour_and_include_the_largest_section():
    seg = np.zeros((40, 8, 8), np.uint8)
    seg[10:21, 2:4, 2:4] = 1
    seg[15, :, :] = 2  # the largest cross-section
    zs = pick_slices(seg, 3)
    assert len(zs) == 3 and all(10 <= z <= 20 for z in zs) and 15 in zs


def test_pick_slices_uses_reference_and_falls_back_to_the_image():
    seg = np.zeros((20, 4, 4), np.uint8)
    ref = seg.copy()
    ref[5:8] = 1
    assert all(5 <= z <= 7 for z in pick_slices(seg, 3, ref))
    seg[15:19] = 1  # a false positive elsewhere does not move the view off the reference tumour
    assert all(5 <= z <= 7 for z in pick_slices(seg, 3, ref))
    seg[:] = 0
    image = np.zeros((20, 4, 4), np.float32)
    image[12:16] = 1.0
    assert all(12 <= z <= 15 for z in pick_slices(seg, 2, None, image))
    assert pick_slices(seg[:1], 5) == [0]


def test_overlay_png_shows_label_colours(tmp_path: Path, case):
    out = save_overlay_png(case.images[3], case.label, tmp_path / "sub" / "o.png", title="case 1")
    assert out == tmp_path / "sub" / "o.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r, g, b = np.moveaxis(imread(out)[..., :3], -1, 0)
    assert ((g > r + 0.15) & (g > b + 0.15)).any()  # oedema painted green
    assert ((r > b + 0.2) & (g > b + 0.2)).any()  # enhancing painted yellow
    assert ((r > g + 0.2) & (r > b + 0.2)).any()  # necrotic core painted red
    assert not list(tmp_path.glob("sub/.*tmp*"))  # atomic: no temporary left


def test_overlay_with_reference_is_wider(tmp_path: Path, case):
    a = imread(save_overlay_png(case.images[3], case.label, tmp_path / "a.png"))
    b = imread(save_overlay_png(case.images[3], case.label, tmp_path / "b.png", ref=case.label))
    assert b.shape[1] > a.shape[1] * 1.3 and b.shape[0] == a.shape[0]


def test_overlay_rejects_mismatched_shapes(tmp_path: Path, case):
    with pytest.raises(AutosegError, match="shape"):
        save_overlay_png(case.images[0], case.label[:-1], tmp_path / "x.png")
    with pytest.raises(AutosegError, match="3D"):
        save_overlay_png(np.stack(case.images), case.label, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_overlay_without_tumour(tmp_path: Path):
    empty = make_case((24, 32, 32), seed=2, tumour=False)
    assert save_overlay_png(empty.images[0], empty.label, tmp_path / "e.png", n_slices=2).is_file()


def test_summary_html_renders_nested_metrics():
    summary = {"n_cases": 2, "mean": {"whole tumour": {"dice": 0.91234, "hd95": float("nan")},
                                      "tumour core": {"dice": 0.8, "hd95": 3.0}}}
    page = summary_html(summary)
    assert "0.9123" in page and "whole tumour" in page and "hd95" in page and "&ndash;" in page
    assert "<td>2</td>" in page


def test_report_html_is_self_contained(tmp_path: Path, case):
    png = save_overlay_png(case.images[3], case.label, tmp_path / "c1.png")
    rows = [{"case": "c1", "region": "whole tumour", "dice": 0.9}, {"case": "<c2>", "region": "tc", "dice": 0.5}]
    out = write_report_html({"mean": {"whole tumour": {"dice": 0.7}}}, rows, {"c1": png}, tmp_path / "r" / "report.html")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "&lt;c2&gt;" in page and "<c2>" not in page
    m = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert m and base64.b64decode(m.group(1)) == png.read_bytes()
    assert "http" not in page  # nothing external


def test_report_names_a_missing_overlay(tmp_path: Path):
    with pytest.raises(AutosegError, match="missing.png"):
        write_report_html({}, [], {"c": tmp_path / "missing.png"}, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
