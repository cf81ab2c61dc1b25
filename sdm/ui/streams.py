"""The app's long events as gradio streams: each drives a generator of ``sdm.explorer`` within the request's time
budget (``within_budget``: it hands control back at cancel points), yields no-change updates between refreshes and
the outputs at the end, and words what stopped it (``gr.Info`` / ``gr.Warning``)."""
from __future__ import annotations

import time
from typing import Callable, Union

import gradio as gr

from sdm.explorer import OverBudget, Session, View, panels, within_budget
from sdm.ui.outputs import GENERATED_KEYS, SKIP_VIEW, render, render_light, render_only

#: a refresh interval in seconds, or a function that gives it now (``paced``)
Interval = Union[float, Callable[[], float]]

#: under load, the streams together refresh about as often as this many streams would on their own
PACE_STREAMS = 2


def paced(every_s: float, in_flight, streams: int = PACE_STREAMS) -> Callable[[], float]:
    """A refresh interval that grows with the requests in flight (``in_flight.count``, an ``InFlight``): ``every_s``
    while at most ``streams`` run, then ``every_s * count / streams``. Thirty students streaming at once then cost
    the server as many picture encodings as two would, not fifteen times more: each picture still moves (every
    ``every_s * 15`` s with 30 at once) and the final one is always sent."""
    return lambda: every_s * max(1.0, in_flight.count / streams)


def _now(every_s: Interval) -> float:
    return every_s() if callable(every_s) else float(every_s)


def generated(sess: Session, view: View, stream, keys, budget_s: float, every_s: Interval):
    """The generated images at 1.0 and at the slider's scale (``stream``: ``sharing.generated_images``): the other
    outputs first, then the trio as the image at s comes in (every ``every_s``, or ``every_s()`` as it is now), then
    the trio, its caption and the session info."""
    yield render_only(sess, view, keys, [k for k in keys if k not in GENERATED_KEYS and k != "info"])
    skip, shown = tuple(gr.skip() for _ in keys), 0.0
    try:
        for _ in within_budget(stream, budget_s, yield_every_s=_now(every_s) / 4):
            now = time.monotonic()
            if now - shown > _now(every_s):
                shown = now
                yield render_only(sess, view, keys, GENERATED_KEYS)
            else:
                yield skip
    except OverBudget as e:
        done, n = e.last
        gr.Info(f"Stopped generating the image at this scale at step {done} of {n}: one request computes for at "
                f"most {budget_s:.0f} s on this shared server.")
    yield render_only(sess, view, keys, GENERATED_KEYS + ("state", "info"))


def stepping(sess: Session, steps, view: View, what: str, budget_s: float, every_s: Interval,
             touch: Callable[[], None]):
    """Drive ``steps`` (``Session.stepping`` or ``sharing.run_to_end``) for at most ``budget_s``: a no-change update
    at every cancel point, the images every ``every_s`` (or ``every_s()``), and the whole view at the end (over
    budget: after a note that says how far it got). ``touch`` tells the session pool the session was used."""
    streamed = time.monotonic()
    generation = sess.generation
    try:
        for _ in within_budget(steps, budget_s):
            now = time.monotonic()
            if now - streamed > _now(every_s):
                streamed = now
                yield render_light(sess, what)
            else:
                yield SKIP_VIEW
    except OverBudget:
        gr.Info(panels.paused_note(sess, budget_s))
    touch()
    if sess.started and sess.generation != generation:    # a new trajectory replaced it: that one shows itself
        gr.Warning(panels.superseded_note(what))
        yield SKIP_VIEW
        return
    yield render(sess, view)


def ticks(steps, keys, progress, budget_s: float):
    """Drive a ``sdm.explorer.compare.*_steps`` generator within the per-request budget: progress and a no-change
    update at every cancel point. Returns its result."""
    skip = tuple(gr.skip() for _ in keys)
    it = within_budget(steps, budget_s)
    while True:
        try:
            frac, desc = next(it)
        except StopIteration as stop:
            return stop.value
        except OverBudget:
            raise ValueError(f"this comparison takes longer than one request may compute on this shared server "
                             f"({budget_s:.0f} s): use fewer steps or a smaller grid") from None
        progress(frac, desc=desc)
        yield skip
