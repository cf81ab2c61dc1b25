"""Headless Chromium drives the real app (``python app.py`` with the shipped checkpoints).

Needs Debian's chromium (/usr/bin/chromium) and Python Playwright. Where they are missing the test is skipped,
unless SDM_REQUIRE_BROWSER=1 (as .ci/run sets), when it fails instead.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

import browser
from harness import launch_app

missing = []
if importlib.util.find_spec("playwright") is None:
    missing.append("Python Playwright (pip install -r requirements-dev.txt)")
if not Path(browser.CHROMIUM).exists():
    missing.append(f"{browser.CHROMIUM} (apt-get install -y chromium)")
if missing and os.environ.get("SDM_REQUIRE_BROWSER") == "1":
    raise RuntimeError("the browser test is required here but cannot run: missing " + "; ".join(missing))
pytestmark = pytest.mark.skipif(bool(missing), reason="missing " + "; ".join(missing))


def test_classroom_walkthrough_in_chromium(tmp_path):
    import imageio.v3 as iio

    with launch_app() as app, browser.browser_page() as page:
        seen = browser.drive(page, app.url)
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)

    # stepping moved the trajectory on and changed the picture of x_t
    assert seen["heading"].startswith("Step 4 / 50 · diffusion step t = ")
    assert seen["xt_4"] != seen["xt_1"]
    # the threshold slider re-ran the step: a new x0 and new spikes
    assert seen["x0_changed"] and seen["raster_changed"]
    # the layer switch reached the plots, which hold data points
    assert seen["layer"] and seen["raster_title"]
    assert seen["raster_points"] > 0 and seen["membrane_points"] > 0
    # the default checkpoint is TSM fine-tuned: the heatmap has a cell per layer and spiking time step
    assert seen["tsm_points"] >= 4 * 10, seen["tsm_note"]
    # 5000 steps in the number box: one message at the box, no error on any panel, the trajectory kept
    assert "Number of steps must be between 1 and 1000, got 5000" in seen["steps_message"]
    assert seen["error_marks"] == [] and seen["heading_after_bad_steps"] == seen["heading_before_bad_steps"]
    img = iio.imread(shot)
    assert img.shape[1] == browser.VIEWPORT["width"] and img.shape[0] >= browser.VIEWPORT["height"]
    assert img[..., :3].std() > 10  # not a blank page


def test_classroom_view_fits_a_projector_screen(tmp_path):
    with launch_app() as app, browser.browser_page(browser.PROJECTOR) as page:
        seen = browser.drive_classroom(page, app.url)

    # ?mode=classroom opens the classroom view: one screen, the full explorer's panels hidden
    assert seen["classroom"] and seen["explorer_hidden"]
    for when in ("scroll_height", "scroll_height_preview", "scroll_height_end", "scroll_height_grid"):
        assert seen[when] <= browser.PROJECTOR["height"], (when, seen[when])
    # controls, image, side-by-side images, raster and rate bars all lie within the first 1280x720 screen
    assert seen["outside"] == [], {k: seen["boxes"][k] for k in seen["outside"]}
    img = seen["boxes"]["image"]
    assert min(img["width"], img["height"]) >= 256
    raster, bars = seen["boxes"]["spike raster"], seen["boxes"]["firing-rate bars"]
    assert raster["x"] > img["x"] + img["width"] and bars["x"] > img["x"] + img["width"]   # beside the image
    # (b) spikes are on screen at load
    assert seen["raster_points_at_load"] > 0
    # (c) the threshold slider: x̂₀ at s beside x̂₀ at 1.0, their difference, ghost bars and the spike change
    assert seen["diff_changed"] and seen["base_kept"]
    assert "spikes per image" in seen["threshold_text"] and "at s = 1.100" in seen["threshold_text"]
    assert seen["rate_bar_traces"] == ["s = 1.0", "s = 1.100"] and seen["rate_bar_points"] >= 2 * 20
    # the T control: a trajectory of T = 8 spiking steps τ
    assert seen["t_radio"] == "8" and seen["raster_tau_range"] == [-0.5, 7.5]
    # (a) Run to end, then the buttons that step forward are off, with a note, and no error anywhere
    assert all(seen["disabled_at_end"].values()) and seen["new_enabled_at_end"]
    assert "Finished" in seen["status_at_end"] and seen["badges"] == 0
    # the comparison's images carry their labels
    assert seen["compare_labels"] == ("threshold scale s = 1.000", "threshold scale s = 1.100")
    # a grid of 16 (a lesson preset) shows each image at 64 px or more
    assert seen["grid_item_px"] >= 64, seen["grid_item_px"]
