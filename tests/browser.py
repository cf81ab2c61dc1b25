"""Drive the real app (``python app.py``) in headless Chromium through Playwright.

Used by ``tests/test_browser.py``, and run directly to remake the README's screenshot and GIF::

    python tests/browser.py --out assets          # writes assets/screenshot.png and assets/demo.gif (classroom view)

Chromium is Debian's (``apt-get install -y chromium``: /usr/bin/chromium); Playwright never downloads one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from harness import FIXTURES as FIXTURES_DIR, launch_app

CHROMIUM = os.environ.get("SDM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 1000}         # the full explorer's walk-through
PROJECTOR = {"width": 1280, "height": 720}         # the classroom view must fit this without scrolling


@contextmanager
def browser_page(viewport: dict | None = None):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=viewport or VIEWPORT)
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


def status_text(page) -> str:
    """The status panel's own text, without the progress timer ("processing | 0.2s") gradio draws inside it while a
    request is pending."""
    return page.inner_text("#status [data-testid=markdown]")


def wait_settled(page, before: str, timeout: float = 120.0) -> str:
    """Wait until the status text differs from ``before`` and no request is pending on it (its progress tracker is
    hidden), and return that text. The tracker's timer alone changes the panel's text, so a plain "text changed"
    returned before the new status came (a flaky "(was …)" check)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        idle = page.evaluate("() => [...document.querySelectorAll('#status [data-testid=status-tracker]')]"
                             ".every(e => e.classList.contains('hide'))")
        now = status_text(page)
        if idle and now != before:
            return now
        page.wait_for_timeout(200)
    raise AssertionError(f"the status did not settle on a new text within {timeout:.0f} s")


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
    # the filmstrip is shown at its own size (object-fit: scale-down), not scaled down pixelated
    seen["filmstrip"] = page.evaluate(
        """() => { const im = document.querySelector('#filmstrip img'); const st = getComputedStyle(im);
                   return {natural: im.naturalWidth, shown: Math.min(1, im.clientWidth / im.naturalWidth,
                           im.clientHeight / im.naturalHeight) * im.naturalWidth, fit: st.objectFit,
                           rendering: st.imageRendering}; }""")
    # 5. the TSM panel
    open_tab(page, "TSM")
    page.wait_for_selector("#plot-tsm .js-plotly-plot")
    page.wait_for_timeout(500)
    seen["tsm_points"] = plot_points(page, "plot-tsm")
    seen["tsm_note"] = page.inner_text("#tsm-note")
    # 6. too many steps in the number box: one message at the box, the trajectory and its panels untouched
    heading = status_heading(page)
    page.fill("#num-steps input", "5000")
    page.press("#num-steps input", "Enter")
    wait_text(page, "#num-steps", "must be between 1 and 1000")
    page.wait_for_timeout(1000)
    seen["steps_message"] = page.inner_text("#num-steps")
    seen["error_marks"] = page.evaluate("() => Array.from(document.querySelectorAll('.error')).map(e => e.className)")
    seen["heading_after_bad_steps"] = status_heading(page)
    seen["heading_before_bad_steps"] = heading
    return seen


# --------------------------------------------------------------------------------------------- the classroom view
#: what must be on the first screen of the classroom view at 1280x720, without scrolling
CLASSROOM_PANELS = {
    "New": "#btn-new", "Step": "#btn-step", "Play": "#btn-play", "Run to end": "#btn-run",
    "threshold slider": "#threshold", "T control": "#time-steps", "lesson presets": "#lesson",
    "image": "#img-xt img", "x̂₀ at 1.0": "#img-x0-base img", "x̂₀ at s": "#img-x0 img", "difference": "#img-diff img",
    "spike raster": "#plot-raster .js-plotly-plot", "firing-rate bars": "#plot-rate-bars .js-plotly-plot",
}
FORWARD_BUTTONS = ("btn-step", "btn-step10", "btn-play", "btn-run")


def bounding_box(page, selector: str) -> dict | None:
    loc = page.locator(selector).first
    return loc.bounding_box() if loc.count() else None


def inside(box: dict | None, viewport: dict) -> bool:
    """The box is fully within the first screen (no scrolling)."""
    return bool(box) and box["width"] > 0 and box["height"] > 0 and box["x"] >= 0 and box["y"] >= 0 and \
        box["x"] + box["width"] <= viewport["width"] + 0.5 and box["y"] + box["height"] <= viewport["height"] + 0.5


def plot_trace_names(page, elem_id: str) -> list[str]:
    return page.evaluate("(id) => (document.querySelector('#' + id + ' .js-plotly-plot')._fullData || [])"
                         ".map(t => t.name)", elem_id)


def plot_x_range(page, elem_id: str) -> list[float]:
    return page.evaluate("(id) => document.querySelector('#' + id + ' .js-plotly-plot')._fullLayout.xaxis.range",
                         elem_id)


def image_label(page, elem_id: str) -> str:
    return page.inner_text(f"#{elem_id} [data-testid=block-label]").strip()


def choose_radio(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} label", has_text=text).first.click()


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text])


def drive_classroom(page, url: str, shots: list | None = None) -> dict:
    """The classroom view at 1280x720 (``page`` at PROJECTOR size): what is on the first screen, then the teacher's
    clicks: Step, the threshold slider (side by side with 1.0), T = 8, Run to end (the buttons switch off), and the
    comparison's labelled images. Returns what it saw."""
    seen: dict = {}

    def snap():
        if shots is not None:
            page.wait_for_timeout(300)
            shots.append(page.screenshot())

    page.goto(url + "?mode=classroom", wait_until="domcontentloaded")
    wait_ready(page)
    page.wait_for_timeout(500)
    vp = page.viewport_size
    seen["classroom"] = page.evaluate("() => document.body.classList.contains('classroom')")
    seen["scroll_height"] = page.evaluate("() => document.documentElement.scrollHeight")
    seen["boxes"] = {name: bounding_box(page, sel) for name, sel in CLASSROOM_PANELS.items()}
    seen["outside"] = [name for name, b in seen["boxes"].items() if not inside(b, vp)]
    seen["explorer_hidden"] = not page.is_visible("#plot-membrane")
    seen["raster_points_at_load"] = plot_points(page, "plot-raster")       # (b) spikes, no click needed
    snap()
    # one Step
    page.click("#btn-step")
    wait_heading(page, "Step 2 /")
    wait_ready(page)
    snap()
    # (c) threshold guidance: one move of the slider, x̂₀ at s beside x̂₀ at 1.0
    base_before, diff_before = image_src(page, "img-x0-base"), image_src(page, "img-diff")
    set_threshold(page, 1.10)
    wait_text(page, "#threshold-text", "s = 1.100 vs 1.0")
    seen["threshold_text"] = page.inner_text("#threshold-text")
    seen["diff_changed"] = wait_changed(page, lambda: image_src(page, "img-diff"), diff_before, "difference") != \
        diff_before
    seen["base_kept"] = image_src(page, "img-x0-base") == base_before
    page.wait_for_function("() => (document.querySelector('#plot-rate-bars .js-plotly-plot')._fullData || [])"
                           ".length === 2")
    seen["rate_bar_traces"] = plot_trace_names(page, "plot-rate-bars")
    seen["rate_bar_points"] = plot_points(page, "plot-rate-bars")
    seen["scroll_height_preview"] = page.evaluate("() => document.documentElement.scrollHeight")
    snap()
    # the T control: 8 spiking steps per denoiser call, a new trajectory
    choose_radio(page, "time-steps", "8")
    wait_text(page, "#status", "T = 8 spiking steps")
    wait_ready(page)
    seen["raster_tau_range"] = plot_x_range(page, "plot-raster")
    seen["t_radio"] = page.evaluate("() => document.querySelector('#time-steps input:checked').value")
    snap()
    # (a) an image denoised: Run to end; then the buttons that step forward switch off
    page.click("#btn-run")
    wait_heading(page, "Step 50 / 50")
    page.wait_for_selector("#btn-run[disabled]")
    seen["disabled_at_end"] = {b: page.is_disabled(f"#{b}") for b in FORWARD_BUTTONS}
    seen["new_enabled_at_end"] = page.is_enabled("#btn-new")
    seen["status_at_end"] = page.inner_text("#status")
    seen["badges"] = page.locator(".error").count()
    seen["scroll_height_end"] = page.evaluate("() => document.documentElement.scrollHeight")
    snap()
    # the comparison (full explorer): both images carry their scale
    choose_radio(page, "mode", "Full explorer")
    page.wait_for_function("() => !document.body.classList.contains('classroom')")
    open_tab(page, "Compare")
    page.click("#btn-compare-scale")
    wait_text(page, "#img-scale-s [data-testid=block-label]", "1.100")
    seen["compare_labels"] = (image_label(page, "img-scale-base"), image_label(page, "img-scale-s"))
    # a lesson preset of sixteen images, back in the classroom view: each image at 64 px or more
    choose_radio(page, "mode", "Classroom")
    page.click("#lesson input")
    page.get_by_role("option", name="⑥ Sixteen images at once").click()
    wait_text(page, "#status", "16 images")
    wait_ready(page)
    page.wait_for_timeout(500)
    seen["grid_item_px"] = page.evaluate(
        """() => { const im = document.querySelector('#img-xt img');
                   // the grid is 4 images of 28*k pixels and 5 borders of 2 pixels, drawn at the image's width
                   return im.getBoundingClientRect().width * (im.naturalWidth - 10) / 4 / im.naturalWidth; }""")
    seen["scroll_height_grid"] = page.evaluate("() => document.documentElement.scrollHeight")
    return seen


# --------------------------------------------------------------------------------------------- legibility
#: every visible text of the page (text nodes, and the values or placeholders of inputs), with its computed font size
#: and its WCAG contrast against the colour behind it: for HTML the backgrounds of the element and its ancestors,
#: composed up to the first opaque one; for plotly's SVG text the box of its annotation or legend over the figure's
#: paper colour. Returns {"texts": [{text, px, contrast, id, title, tag, cls}], "height", "bottom"}.
AUDIT_JS = r"""() => {
  // every visible text of the page: its computed font size, colour and the colour behind it (WCAG contrast)
  const parse = (s) => {
    if (!s || s === 'none' || s === 'transparent') return null;
    const m = s.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,/]+/).filter(x => x).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const over = (top, under) => ({r: top.r * top.a + under.r * (1 - top.a), g: top.g * top.a + under.g * (1 - top.a),
                                 b: top.b * top.a + under.b * (1 - top.a), a: 1});
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
                       return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const WHITE = {r: 255, g: 255, b: 255, a: 1};
  // the colour behind an HTML element: its own and its ancestors' backgrounds, composed up to the first opaque one
  const htmlBackground = (el) => {
    const layers = [];
    for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let bg = WHITE;
    for (let i = layers.length - 1; i >= 0; i--) bg = over(layers[i], bg);
    return bg;
  };
  // ... of an SVG text (plotly): the box of its annotation or legend, else the figure's paper
  const svgBackground = (el) => {
    const plot = el.closest('.js-plotly-plot');
    let bg = plot && plot._fullLayout ? (parse(plot._fullLayout.paper_bgcolor) || WHITE) : htmlBackground(plot || el.parentElement);
    if (bg.a < 1) bg = over(bg, htmlBackground(plot.parentElement));
    for (let g = el.parentElement; g && g.tagName.toLowerCase() !== 'svg'; g = g.parentElement) {
      const r = g.querySelector(':scope > rect.bg, :scope > rect.legend-bg');
      if (r) { const c = parse(getComputedStyle(r).fill); const op = parseFloat(getComputedStyle(r).fillOpacity || '1');
               if (c && c.a * op > 0) return over({...c, a: c.a * op}, bg); }
    }
    return bg;
  };
  const visible = (el) => {
    if (!el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) return false;
    for (let e = el; e && e.nodeType === 1; e = e.parentElement)
      if (parseFloat(getComputedStyle(e).opacity) === 0) return false;
    const r = el.getBoundingClientRect();
    return r.width > 1 && r.height > 1;
  };
  const out = [];
  const add = (el, text, colorStr, style) => {
    const inSvg = !!el.closest('svg');
    const fill = inSvg ? parse(getComputedStyle(el).fill) : null;
    let fg = inSvg ? fill : parse(colorStr);
    if (!fg) return;
    const bg = inSvg ? svgBackground(el) : htmlBackground(el);
    if (fg.a < 1) fg = over(fg, bg);
    const id = (el.closest('[id]') || {}).id || '';
    const title = !!el.closest('#title, .gtitle') && !el.closest('.gtitle-subtitle');
    out.push({text: text.slice(0, 60), px: parseFloat(style.fontSize), contrast: ratio(fg, bg), id, title,
              tag: el.tagName.toLowerCase(), cls: String(el.className && el.className.baseVal !== undefined ? el.className.baseVal : el.className).slice(0, 40)});
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const text = n.textContent.trim();
    const el = n.parentElement;
    if (!text || !el || ['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE'].includes(el.tagName)) continue;
    if (!visible(el)) continue;
    add(el, text, getComputedStyle(el).color, getComputedStyle(el));
  }
  for (const el of document.querySelectorAll('input:not([type=hidden]):not([type=range]):not([type=radio]):not([type=checkbox]), textarea')) {
    if (!visible(el)) continue;
    if (el.value) add(el, el.value, getComputedStyle(el).color, getComputedStyle(el));
    else if (el.placeholder) { const ph = getComputedStyle(el, '::placeholder'); add(el, el.placeholder, ph.color, ph); }
  }
  return {texts: out, height: document.documentElement.scrollHeight,
          bottom: Math.max(...Array.from(document.querySelectorAll('#header, #main')).map(e => e.getBoundingClientRect().bottom))};
}"""
MIN_TEXT_PX, MIN_TITLE_PX, MIN_CONTRAST = 16, 20, 4.5


def legibility(page) -> dict:
    """What the classroom view shows now, measured from the DOM: the page height (scrollHeight), the bottom of its
    content, the smallest font size of all texts and of the titles, the lowest contrast, and the texts that miss
    ``MIN_TEXT_PX`` / ``MIN_TITLE_PX`` / ``MIN_CONTRAST``."""
    r = page.evaluate(AUDIT_JS)
    texts = r["texts"]
    titles = [t for t in texts if t["title"]]
    return {"height": r["height"], "bottom": round(r["bottom"], 1), "texts": len(texts),
            "min_px": min(t["px"] for t in texts), "min_title_px": min((t["px"] for t in titles), default=None),
            "min_contrast": round(min(t["contrast"] for t in texts), 2),
            "small": [t for t in texts if t["px"] < MIN_TEXT_PX],
            "small_titles": [t for t in titles if t["px"] < MIN_TITLE_PX],
            "faint": [t for t in texts if t["contrast"] < MIN_CONTRAST], "all": texts}


def choose_option(page, selector: str, name: str) -> None:
    """Open the dropdown ``selector`` and pick the option called exactly ``name``."""
    page.click(f"{selector} input")
    page.get_by_role("option", name=name, exact=True).click()


def option_names(page, selector: str) -> list[str]:
    page.click(f"{selector} input")
    options = page.locator("[role=option]")
    options.first.wait_for()
    names = [options.nth(i).get_attribute("aria-label") for i in range(options.count())]
    page.click("#title")                                       # closes the list
    page.locator("[role=option]").first.wait_for(state="detached")
    return names


def fits(page, selector: str) -> bool:
    """The text of the input ``selector`` is shown whole (not cut by its box)."""
    return page.evaluate("(s) => { const e = document.querySelector(s); return e.scrollWidth <= e.clientWidth + 1; }",
                         selector)


#: the checkpoints the classroom walk switches to: another architecture (the wider SNN), a converted SNN at T = 3,
#: and the other data set (with its own ANN); every checkpoint's card and panels are tested in test_app and
#: test_shipped, and walking all of them took a minute of the suite
WALKED_CHECKPOINTS = ("fmnist-sdm-t4-large", "fmnist-ann2snn-t3-ft", "mnist-sdm-t4")


def walk_classroom_states(page, url: str) -> dict:
    """The classroom view at 1280x720 in every state a lesson passes through: load; the slider both ways mid-run (and
    one arrow-key press); Run to end; the slider both ways at the end; T = 1 and 8; each DDIM step preset; each lesson
    preset; a switch to each of ``WALKED_CHECKPOINTS`` (or the first three others when the tree has none of them). Returns {"states": {state: legibility}, "status": {state: status text}, ...}."""
    states, status, seen = {}, {}, {}

    def check(name):
        page.wait_for_timeout(300)
        states[name] = legibility(page)
        status[name] = status_text(page)

    def after(action):
        """Do ``action`` (it starts a new trajectory) and wait until the status has changed and the buttons are on."""
        before = status_text(page)
        action()
        wait_settled(page, before)
        wait_ready(page)

    page.goto(url + "?mode=classroom", wait_until="domcontentloaded")
    wait_ready(page)
    check("load")
    page.click("#btn-step10")
    wait_heading(page, "Step 11 /")
    wait_ready(page)
    for s in (1.05, 0.95):
        set_threshold(page, s)
        wait_text(page, "#threshold-text", f"s = {s:.3f} vs 1.0")
        check(f"mid-run, s = {s}")
    set_threshold(page, 1.0)
    wait_text(page, "#status", "s = 1.000")
    page.focus("#threshold input[type=range]")
    page.keyboard.press("ArrowRight")
    wait_text(page, "#threshold-text", "vs 1.0")
    seen["arrow_key_value"] = float(page.input_value("#threshold input[data-testid=number-input]"))
    page.click("#btn-run")
    wait_heading(page, "Step 50 / 50")
    page.wait_for_selector("#btn-run[disabled]")
    check("Run to end")
    seen["continue_at_end"] = page.is_enabled("#btn-continue")
    for s in (1.05, 0.95):
        set_threshold(page, s)
        wait_text(page, "#threshold-text", f"s = {s:.3f} vs 1.0")
        check(f"at the end, s = {s}")
    for T in ("1", "8"):
        after(lambda: choose_radio(page, "time-steps", T))
        check(f"T = {T}")
    for n in (10, 20, 50, 100):
        after(lambda: page.click(f"#btn-steps-{n}"))
        check(f"DDIM {n}")
    seen["lesson_fits"] = {}
    for name in option_names(page, "#lesson"):
        after(lambda: choose_option(page, "#lesson", name))
        check(f"lesson {name}")
        seen["lesson_fits"][name] = fits(page, "#lesson input")
    seen["lesson_after_checkpoint"] = []
    current = page.input_value("#checkpoint input")
    others = [n for n in option_names(page, "#checkpoint") if n != current]
    for name in [n for n in WALKED_CHECKPOINTS if n in others] or others[:len(WALKED_CHECKPOINTS)]:
        after(lambda: choose_option(page, "#checkpoint", name))
        check(f"checkpoint {name}")
        seen["lesson_after_checkpoint"].append(page.input_value("#lesson input"))
        current = name
    return {"states": states, "status": status, **seen}


def walk_budget_notice(page, url: str) -> dict:
    """The classroom view when Run to end stops at its time budget (an app launched with a small SDM_RUN_BUDGET_S):
    the notice, its legibility and the status heading beside it."""
    page.goto(url + "?mode=classroom", wait_until="domcontentloaded")
    wait_ready(page)
    page.click("#btn-steps-100")
    wait_heading(page, "Step 1 / 100")
    wait_ready(page)
    page.click("#btn-run")
    notice = page.get_by_text("Paused at step").first
    notice.wait_for()
    page.wait_for_selector("#btn-run:not([disabled])")
    page.wait_for_timeout(500)
    return {"notice": notice.inner_text(), "heading": status_heading(page), "legibility": legibility(page)}


def record_media(out: Path, url: str) -> tuple[Path, Path]:
    """The README's screenshot and GIF, of the classroom view at 1280x720: load, Step x10 three times, the
    threshold slider to 1.10 (the screenshot), then to 0.92, then Run to end."""
    import imageio.v3 as iio
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    shots: list[bytes] = []
    shot = out / "screenshot.png"
    with browser_page(PROJECTOR) as page:
        def snap():
            page.wait_for_timeout(400)
            shots.append(page.screenshot())

        page.goto(url + "?mode=classroom", wait_until="domcontentloaded")
        wait_ready(page)
        snap()
        for k in (11, 21, 31):
            page.click("#btn-step10")
            wait_heading(page, f"Step {k} /")
            wait_ready(page)
            snap()
        set_threshold(page, 1.10)
        wait_text(page, "#threshold-text", "s = 1.100 vs 1.0")
        page.wait_for_timeout(800)
        page.screenshot(path=str(shot))
        shots.append(shot.read_bytes())
        set_threshold(page, 0.92)
        wait_text(page, "#threshold-text", "s = 0.920 vs 1.0")
        snap()
        set_threshold(page, 1.0)
        wait_text(page, "#status", "s = 1.000.")
        page.click("#btn-run")
        wait_heading(page, "Step 50 / 50")
        page.wait_for_selector("#btn-run[disabled]")
        snap()
    frames = np.stack([iio.imread(s)[..., :3] for s in shots])     # full size: the text stays readable
    gif = out / "demo.gif"
    iio.imwrite(gif, frames, duration=[1200] * (len(frames) - 1) + [2500], loop=0)
    return shot, gif


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets", help="folder for screenshot.png and demo.gif")
    p.add_argument("--checkpoints", default=None, help="checkpoints folder (default: the app's own)")
    args = p.parse_args(argv)
    with launch_app(args.checkpoints) as app:
        shot, gif = record_media(Path(args.out), app.url)
    print(f"wrote {shot} and {gif} ({gif.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
