"""The handlers' errors as the user sees them."""
from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

__all__ = ["user_errors"]

log = logging.getLogger("sdm.app")


def user_errors(fn):
    """Turn the ValueErrors of sdm (bad input, unknown names, broken checkpoints) into gr.Error messages, and
    anything unexpected into a short gr.Error too: one bad request never takes the app down."""

    def convert(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, (ValueError, FileNotFoundError, KeyError)):
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            return gr.Error(msg[:1].upper() + msg[1:], print_exception=False)
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Internal error ({type(e).__name__}). The app is still running; please retry.")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                raise convert(e) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise convert(e) from None
    return wrapper
