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

    with browser.serve_app() as url, browser.browser_page() as page:
        seen = browser.drive(page, url)
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)

    # stepping moved the trajectory on and changed the picture of x_t
    assert seen["heading"].startswith("Step 4 / 50")
    assert seen["xt_4"] != seen["xt_1"]
    # the threshold slider re-ran the step: a new x0 and new spikes
    assert seen["x0_changed"] and seen["raster_changed"]
    # the layer switch reached the plots, which hold data points
    assert seen["layer"] and seen["raster_title"]
    assert seen["raster_points"] > 0 and seen["membrane_points"] > 0
    # the default checkpoint is TSM fine-tuned: the heatmap has a cell per layer and spiking time step
    assert seen["tsm_points"] >= 4 * 10, seen["tsm_note"]
    img = iio.imread(shot)
    assert img.shape[1] == browser.VIEWPORT["width"] and img.shape[0] >= browser.VIEWPORT["height"]
    assert img[..., :3].std() > 10  # not a blank page
