"""Input components whose value reaches the handler as sent: ``sdm.explorer.validation`` checks it once, with a
message that names the input (gradio's own conversion would fail first, with a generic error, on strings, NaN or
inf). No __init__ of their own: gradio reads a component's props from its __init__ signature."""
from __future__ import annotations

import gradio as gr

from .gradio_patches import no_stub_files

__all__ = ["RawSlider", "RawNumber", "RawRadio"]

with no_stub_files():
    class RawSlider(gr.Slider):
        is_template = True   # rendered by the frontend as a plain Slider

        def preprocess(self, payload):
            return payload

    class RawNumber(gr.Number):
        is_template = True

        def preprocess(self, payload):
            return payload

    class RawRadio(gr.Radio):
        is_template = True

        def preprocess(self, payload):
            return payload
