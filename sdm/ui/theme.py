"""How the page looks: gradio's theme and the app's CSS (Gradio 6 takes both in ``launch()``). The classroom view is
the CSS rule at the end: while <body> has the class "classroom", everything marked "full-only" is hidden."""
from __future__ import annotations

import gradio as gr

__all__ = ["THEME", "CSS"]

THEME = gr.themes.Default(text_size=gr.themes.sizes.text_lg, primary_hue="blue")
CSS = """
.gradio-container { --layout-gap: 10px; --block-padding: 6px 10px; --block-label-padding: 2px 8px;
                    padding-top: 8px !important; }
.pixelated img, .pixelated canvas { image-rendering: pixelated; image-rendering: crisp-edges; }
#status h3 { margin: 0 0 .1rem 0; font-size: 1.1rem; }
#status p { margin: 0 0 .15rem 0; font-size: .85rem; line-height: 1.25; }
#title p { margin: 0; font-size: 1.15rem; line-height: 1.3; }
#threshold-text p { margin: 0; font-size: .85rem; line-height: 1.25; }
#header { align-items: center; flex-wrap: nowrap; }
#title { flex: 0 0 310px !important; min-width: 0 !important; }
#lesson-label { flex: 0 0 120px !important; min-width: 0 !important; text-align: right; }
#lesson-label p { margin: 0; font-size: .95rem; white-space: nowrap; }
#mode { flex: 0 0 auto !important; }
#mode .wrap { flex-wrap: nowrap; }
#threshold input[type=number] { width: 4.5rem; }
#time-steps .wrap { gap: 4px; }
#time-steps label { padding: 3px 6px; font-size: .9rem; white-space: nowrap; }
#step-presets { align-items: center; flex-wrap: nowrap; gap: 4px; }
#step-presets > * { min-width: 0 !important; flex: 1 1 0 !important; }
#step-presets > #step-presets-label { flex: 0 0 auto !important; width: auto !important; }
#step-presets-label p { margin: 0; font-size: .9rem; white-space: nowrap; }
#img-diff img { outline: 1px solid #BBBBBB; }
#trio > * { min-width: 0 !important; flex: 1 1 0 !important; }
.buttons { flex-wrap: nowrap; }
.teach { font-size: 1rem; color: #333; border-left: 4px solid #0072B2; padding-left: .6rem; }
.teach p { margin: .2rem 0; }
#summary { font-size: 1rem; }
footer { display: none !important; }
/* the classroom view: one screen, nothing else */
body.classroom .full-only { display: none !important; }
"""
