"""Drive the real app (``python app.py``) in headless Chromium through Playwright.

Used by ``tests/test_browser.py``, and run directly to remake the README's screenshot and GIF::

    python tests/browser.py --out assets          # writes assets/screenshot.png and assets/demo.gif

Chromium is Debian's (``apt-get install -y chromium``: /usr/bin/chromium); Playwright never downloads one.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SDM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(checkpoints: str | Path | None = None, timeout: float = 120.0):
    """Start ``python app.py`` on a free port; yield its URL; stop it afterwards."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    if checkpoints is not None:
        env["SDM_CHECKPOINTS"] = str(checkpoints)
    log = open(os.devnull, "w") if os.environ.get("SDM_QUIET_APP", "1") == "1" else None
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with code {proc.returncode} before serving")
            try:
                with urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() - t0 > timeout:
                raise TimeoutError(f"app.py did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log is not None:
            log.close()


@contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


# --------------------------------------------------------------------------------------------- reading the page
def status_heading(page) -> str:
    return page.inner_text("#status h3")


def image_src(page, elem_id: str) -> str:
    return page.get_attribute(f"#{elem_id} img", "src") or ""


def plot_points(page, elem_id: str) -> int:
    """Data points the plotly figure in #elem_id holds (x values, or z cells for a heatmap)."""
    return page.evaluate(
        """(id) => {
            const el = document.querySelector('#' + id + ' .js-plotly-plot');
            if (!el || !el._fullData) return -1;
            // _fullData: the traces as plotly drew them (numpy arrays arrive base64-packed in .data)
            let n = 0;
            for (const t of el._fullData) {
                if (t.visible === false) continue;
                if (t.z) n += Array.from(t.z).map(r => (r && r.length !== undefined) ? Array.from(r) : [r]).flat()
                                  .filter(v => v !== null && v === v).length;
                else if (t.x) n += Array.from(t.x).filter(v => v !== null && v === v).length;
            }
            return n;
        }""", elem_id)


def plot_title(page, elem_id: str) -> str:
    return page.evaluate(
        """(id) => { const el = document.querySelector('#' + id + ' .js-plotly-plot');
                     const t = el && el.layout && el.layout.title; return t ? (t.text || String(t)) : ''; }""", elem_id)


def wait_ready(page) -> None:
    """The buttons are enabled once the first trajectory is in."""
    page.wait_for_selector("#btn-step:not([disabled])")


def wait_heading(page, text: str) -> None:
    page.wait_for_function("(t) => { const h = document.querySelector('#status h3'); return h && h.innerText.includes(t); }",
                           arg=text)


def wait_changed(page, fn, before, what: str, timeout: float = 60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        now = fn()
        if now != before:
            return now
        page.wait_for_timeout(200)
    raise AssertionError(f"{what} did not change within {timeout:.0f} s")


# --------------------------------------------------------------------------------------------- actions
def set_threshold(page, value: float) -> None:
    box = page.locator("#threshold input[data-testid=number-input]")
    box.fill(f"{value}")
    box.press("Enter")


def choose_layer(page, index: int) -> str:
    """Open the layer dropdown and pick its index-th option; return the option's text."""
    page.click("#layer input[role=combobox]")
    options = page.locator("[role=option]")
    options.first.wait_for()
    option = options.nth(index)
    text = option.inner_text().strip()
    option.click()
    return text


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def drive(page, url: str, shots: list | None = None) -> dict:
    """The classroom walk-through. Returns what it saw; ``shots`` collects PNG bytes along the way."""
    seen = {}

    def snap():
        if shots is not None:
            page.evaluate("() => window.scrollTo(0, 0)")
            page.wait_for_timeout(300)
            shots.append(page.screenshot())

    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#btn-new")
    wait_ready(page)
    # 1. a new trajectory, with a chosen seed
    page.fill("#seed input", "3")
    page.click("#btn-new")
    wait_heading(page, "Step 1 /")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('seed 3')")
    wait_ready(page)
    seen["xt_1"] = image_src(page, "img-xt")
    snap()
    # 2. Step: x_t moves on
    for k in (2, 3, 4):
        page.click("#btn-step")
        wait_heading(page, f"Step {k} /")
        wait_ready(page)
        snap()
    seen["xt_4"] = wait_changed(page, lambda: image_src(page, "img-xt"), seen["xt_1"], "x_t")
    seen["heading"] = status_heading(page)
    # 3. the threshold slider: x0 is re-run at the new scale
    x0_before = image_src(page, "img-x0")
    raster_before = page.evaluate("() => JSON.stringify(document.querySelector('#plot-raster .js-plotly-plot').data)")
    # the slider's end, 1.10: how many of the raster's 64 neurons flip at a given scale depends on the weights (with
    # those of 2026-11-29, none of them at 1.05 on this step and layer, 6 spikes at 1.10)
    set_threshold(page, 1.10)
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Preview at threshold scale 1.100')")
    seen["x0_changed"] = wait_changed(page, lambda: image_src(page, "img-x0"), x0_before, "x0") != x0_before
    seen["raster_changed"] = wait_changed(
        page, lambda: page.evaluate("() => JSON.stringify(document.querySelector('#plot-raster .js-plotly-plot').data)"),
        raster_before, "raster") != raster_before
    snap()
    # 4. another layer
    title_before = plot_title(page, "plot-raster")
    seen["layer"] = choose_layer(page, 5)
    seen["raster_title"] = wait_changed(page, lambda: plot_title(page, "plot-raster"), title_before, "raster title")
    seen["raster_points"] = plot_points(page, "plot-raster")
    seen["membrane_points"] = plot_points(page, "plot-membrane")
    snap()
    # 5. the TSM panel
    open_tab(page, "TSM")
    page.wait_for_selector("#plot-tsm .js-plotly-plot")
    page.wait_for_timeout(500)
    seen["tsm_points"] = plot_points(page, "plot-tsm")
    seen["tsm_note"] = page.inner_text("#tsm-note")
    return seen


def record_media(out: Path, url: str) -> tuple[Path, Path]:
    """The README's screenshot (after the walk-through) and a GIF of it."""
    import imageio.v3 as iio
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    shots: list[bytes] = []
    with browser_page() as page:
        page.set_viewport_size({"width": 1280, "height": 1560})
        drive(page, url, shots)
        page.get_by_role("tab", name="Membrane traces").click()
        page.evaluate("() => window.scrollTo(0, 0)")
        page.click("#btn-run")
        wait_heading(page, "Step 50 /")
        wait_ready(page)
        page.evaluate("() => window.scrollTo(0, 0)")
        page.wait_for_timeout(800)
        shot = out / "screenshot.png"
        page.screenshot(path=str(shot))
        shots.append(shot.read_bytes())
    frames = [iio.imread(s)[..., :3] for s in shots]
    small = [f[::2, ::2] for f in frames]  # half size keeps the GIF small
    gif = out / "demo.gif"
    iio.imwrite(gif, np.stack(small), duration=[900] * (len(small) - 1) + [2500], loop=0)
    return shot, gif


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets", help="folder for screenshot.png and demo.gif")
    p.add_argument("--checkpoints", default=None, help="checkpoints folder (default: the app's own)")
    args = p.parse_args(argv)
    with serve_app(args.checkpoints) as url:
        shot, gif = record_media(Path(args.out), url)
    print(f"wrote {shot} and {gif} ({gif.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
