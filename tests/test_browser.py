"""Headless Chromium drives the real app (``python app.py`` with the shipped checkpoints).

Needs Debian's chromium (/usr/bin/chromium) and Python Playwright. Where they are missing the test is skipped,
unless SDM_REQUIRE_BROWSER=1 (as .ci/run sets), when it fails instead.
"""
from __future__ import annotations

import importlib.util
import os
import re
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


@pytest.fixture(scope="module")
def shipped_app():
    """One ``python app.py`` with the shipped checkpoints for the tests of this module that a worker runs (each
    test opens its own page, so its own session; a launch costs about 10 s of the suite)."""
    with launch_app() as app:
        yield app


def test_classroom_walkthrough_in_chromium(tmp_path, shipped_app):
    import imageio.v3 as iio

    with browser.browser_page() as page:
        seen = browser.drive(page, shipped_app.url)
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
    # the filmstrip at its own size: its captions stay sharp (it was 1153 px shown at 944 px, pixelated)
    film = seen["filmstrip"]
    assert film["shown"] == film["natural"] <= 900 and film["rendering"] not in ("pixelated", "crisp-edges"), film
    img = iio.imread(shot)
    assert img.shape[1] == browser.VIEWPORT["width"] and img.shape[0] >= browser.VIEWPORT["height"]
    assert img[..., :3].std() > 10  # not a blank page


def test_classroom_view_fits_a_projector_screen(tmp_path, shipped_app):
    with browser.browser_page(browser.PROJECTOR) as page:
        seen = browser.drive_classroom(page, shipped_app.url)

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


def test_classroom_view_is_readable_from_the_back_in_every_state(shipped_app):
    """Issue 32: at 1280x720, in every state a lesson passes through, the page is at most 720 px tall, every text is
    at least 16 px (titles 20 px) with a contrast of at least 4.5:1, the slider's arrow key steps 0.01, and no state
    changes silently."""
    with browser.browser_page(browser.PROJECTOR) as page:
        seen = browser.walk_classroom_states(page, shipped_app.url)
    states = seen["states"]
    names = list(states)
    assert {"load", "mid-run, s = 1.05", "mid-run, s = 0.95", "Run to end", "at the end, s = 1.05",
            "at the end, s = 0.95", "T = 1", "T = 8", "DDIM 10", "DDIM 20", "DDIM 50", "DDIM 100"} <= set(names)
    assert sum(n.startswith("lesson ") for n in names) >= 7 and sum(n.startswith("checkpoint ") for n in names) >= 3
    for name, m in states.items():
        brief = {k: v for k, v in m.items() if k != "all"}
        assert m["height"] <= browser.PROJECTOR["height"] and m["bottom"] <= browser.PROJECTOR["height"], (name, brief)
        assert m["small"] == [] and m["small_titles"] == [] and m["faint"] == [], (name, brief)
        assert m["min_px"] >= 16 and m["min_title_px"] >= 20 and m["min_contrast"] >= 4.5, (name, brief)
    assert seen["arrow_key_value"] == 1.01
    # nothing silent: a changed T or step preset or checkpoint says it replaced the trajectory; Continue is off at the
    # end; lesson labels fit their box; the lesson label clears when the checkpoint changes
    for name in ("T = 1", "T = 8", "DDIM 10", "DDIM 20", "DDIM 50", "DDIM 100"):
        assert "New trajectory" in seen["status"][name], (name, seen["status"][name])
    for name in (n for n in names if n.startswith("checkpoint ")):
        assert "(was " in seen["status"][name], (name, seen["status"][name])
    assert seen["continue_at_end"] is False
    assert all(seen["lesson_fits"].values()), seen["lesson_fits"]
    assert seen["lesson_after_checkpoint"] and all(v == "" for v in seen["lesson_after_checkpoint"])


def test_the_budget_notice_is_readable_and_counts_as_the_status_does():
    with launch_app(browser.FIXTURES_DIR, SDM_RUN_BUDGET_S="0.05") as app, \
            browser.browser_page(browser.PROJECTOR) as page:
        seen = browser.walk_budget_notice(page, app.url)
    k, n = map(int, re.search(r"Paused at step (\d+) of (\d+)", seen["notice"]).groups())
    assert 1 < k < n == 100 and seen["heading"].startswith(f"Step {k} / {n} ")
    m = seen["legibility"]
    brief = {k: v for k, v in m.items() if k != "all"}
    assert m["height"] <= browser.PROJECTOR["height"] and m["bottom"] <= browser.PROJECTOR["height"], brief
    assert m["small"] == [] and m["small_titles"] == [] and m["faint"] == [], brief
    notice = [t for t in m["all"] if t["text"].startswith("Paused at step")]       # the notice itself was measured
    assert notice and min(t["px"] for t in notice) >= 16 and min(t["contrast"] for t in notice) >= 4.5, notice
