"""Every patch of gradio's internals the app makes, in one place, each with why it exists. Each one reaches into
gradio 6's private attributes (requirements.txt pins the version): check them when gradio is upgraded
(tests/test_api_limits.py checks the busy message).
"""
from __future__ import annotations

import contextlib

import gradio as gr

__all__ = ["BUSY", "no_stub_files", "say_busy", "drop_tab_state"]

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


def drop_tab_state(demo: gr.Blocks, owner: str) -> None:
    """Forget gradio's copy of a closed tab's outputs (plots, images): gradio keeps a tab's state for an hour in
    case the tab comes back, and has no public call to free it at once when the tab is closed (``demo.unload``)."""
    holder = getattr(demo, "state_holder", None)
    if holder is not None and owner in holder:
        holder.delete_state(owner)
        with holder.lock:
            holder.session_data.pop(owner, None)
            holder.time_last_used.pop(owner, None)
