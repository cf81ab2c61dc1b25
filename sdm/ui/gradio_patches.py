"""Every patch of gradio's internals the app makes, in one place, each with why it exists. Each one reaches into
gradio 6's private attributes (requirements.txt pins the version): check them when gradio is upgraded
(tests/test_api_limits.py checks the busy message).
"""
from __future__ import annotations

import contextlib
import copy

import gradio as gr

__all__ = ["BUSY", "no_stub_files", "say_busy", "cheap_skips", "no_backend_switch", "patch_demo", "drop_tab_state"]

BUSY = ("The server is busy: {n} requests are waiting, the most it queues. Please try again in a minute.")


@contextlib.contextmanager
def no_stub_files():
    """Gradio writes a .pyi type stub next to every file that defines a Component subclass (a help for authors
    of custom components). The app must not write into the repository: switch that off while the input
    components (``sdm.ui.components``) are defined."""
    import gradio.component_meta as meta
    original = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        meta.create_or_modify_pyi = original


def say_busy(demo: gr.Blocks) -> None:
    """A full queue answers with BUSY instead of gradio's "Queue is full. Max size is 64 and size is 64." (which
    tells a student nothing): gradio has no option for the message, so its queue's ``push`` is wrapped."""
    queue = demo._queue
    push = queue.push

    async def push_or_busy(*args, **kwargs):
        ok, msg, status = await push(*args, **kwargs)
        if status == "queue_full":
            msg = BUSY.format(n=queue.max_size)
        return ok, msg, status

    queue.push = push_or_busy


#: what gradio sends for an output a handler skipped (``gr.skip()``), and for a skipped ``gr.State``
_SKIP = gr.skip()


def cheap_skips(demo: gr.Blocks) -> None:
    """A skipped output costs nothing. Gradio treats ``gr.skip()`` (``{"__type__": "update"}``) as a property update:
    for every skipped output of every yield it builds a new component and rebuilds its config (a pydantic JSON
    schema), only to send ``{"__type__": "update"}``. A run's stream yields 17 skips at each cancel point, and under a
    class of 30 that was 16% of the server's CPU (py-spy, 15 students on their own seeds). The demo's
    ``postprocess_data`` is wrapped: bare skips are answered at once (what gradio would send: the update for a
    component, None for a State) and the other outputs go through gradio as before."""
    original = demo.postprocess_data

    async def postprocess_data(block_fn, predictions, state):
        outputs = list(block_fn.outputs)
        if isinstance(predictions, dict) and predictions == _SKIP and len(outputs) > 1:
            predictions = [_SKIP] * len(outputs)
        if (not isinstance(predictions, (list, tuple)) or len(predictions) != len(outputs) or len(outputs) < 2
                or block_fn.batch or block_fn.is_validator_function):
            return await original(block_fn, predictions, state)
        keep = [i for i, p in enumerate(predictions) if not (isinstance(p, dict) and p == _SKIP)]
        if len(keep) == len(outputs):
            return await original(block_fn, predictions, state)
        done = []
        if keep:
            part = copy.copy(block_fn)
            part.outputs = [outputs[i] for i in keep]
            kept = [predictions[i] for i in keep]
            # (gradio takes a one-output function's return value as that output's value, not a list of values)
            done = await original(part, kept[0] if len(keep) == 1 else kept, state)
        answer = [None if outputs[i].stateful else dict(_SKIP) for i in range(len(outputs))]
        for i, value in zip(keep, done):
            answer[i] = value
        return answer

    demo.postprocess_data = postprocess_data


def patch_demo(demo: gr.Blocks) -> None:
    """Every patch of a built, queued demo: ``say_busy``, ``cheap_skips`` and ``no_backend_switch``."""
    say_busy(demo)
    cheap_skips(demo)
    no_backend_switch()


class _KeepBackend:
    """In place of gradio's ``MatplotlibBackendMananger``: leaves matplotlib alone."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def no_backend_switch() -> None:
    """Gradio sets matplotlib's backend to "agg" and back around every event it processes, each streamed update
    included (``route_utils.call_process_api``), importing matplotlib twice: where it is not installed (it is not a
    requirement) two failed imports, each searching sys.path on disk, about 3.5% of the server's own CPU under a
    class of 30. The app draws no matplotlib figure (its plots are plotly): the switch is skipped, process-wide like
    gradio's."""
    import gradio.utils
    gradio.utils.MatplotlibBackendMananger = _KeepBackend


def drop_tab_state(demo: gr.Blocks, owner: str) -> None:
    """Forget gradio's copy of a closed tab's outputs (plots, images): gradio keeps a tab's state for an hour in
    case the tab comes back, and has no public call to free it at once when the tab is closed (``demo.unload``)."""
    holder = getattr(demo, "state_holder", None)
    if holder is not None and owner in holder:
        holder.delete_state(owner)
        with holder.lock:
            holder.session_data.pop(owner, None)
            holder.time_last_used.pop(owner, None)
