"""How the page looks: gradio's theme and the app's CSS (Gradio 6 takes both in ``launch()``). The classroom view is
the CSS rules at the end: while <body> has the class "classroom", everything marked "full-only" is hidden and every
text is at least ``CLASSROOM_TEXT_PX`` (titles ``CLASSROOM_TITLE_PX``), readable from the back of a room on a
1280x720 projector. The theme's greys are dark enough for a contrast of at least 4.5:1 (WCAG AA) on white in both
views."""
from __future__ import annotations

import gradio as gr

__all__ = ["THEME", "CSS", "CLASSROOM_TEXT_PX", "CLASSROOM_TITLE_PX"]

CLASSROOM_TEXT_PX = 16          # the smallest text of the classroom view
CLASSROOM_TITLE_PX = 20         # ... of its titles

# gradio's default greys (neutral-400/500 on white: 2.5:1 to 4.6:1) and primary button (white on blue-500: 3.7:1)
# are too faint for a projector: labels, hints and placeholders at neutral-600/700, the primary button at blue-700
THEME = gr.themes.Default(text_size=gr.themes.sizes.text_lg, primary_hue="blue").set(
    body_text_color_subdued="*neutral_600", block_info_text_color="*neutral_600",
    block_label_text_color="*neutral_700", block_title_text_color="*neutral_700",
    input_placeholder_color="*neutral_600",
    button_primary_background_fill="*primary_700", button_primary_background_fill_hover="*primary_800")
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
#filmstrip img { object-fit: scale-down; }    /* its own size (captions stay sharp), smaller only if it must */
#trio > * { min-width: 0 !important; flex: 1 1 0 !important; }
.buttons { flex-wrap: nowrap; }
.teach { font-size: 1rem; color: #333; border-left: 4px solid #0072B2; padding-left: .6rem; }
.teach p { margin: .2rem 0; }
#summary { font-size: 1rem; }
footer { display: none !important; }
/* the classroom view: one screen, nothing else, every text >= 16 px (titles >= 20 px) */
body.classroom .full-only { display: none !important; }
body.classroom { --text-xxs: 16px; --text-xs: 16px; --text-sm: 16px; --block-label-text-size: 16px;
                 --block-info-text-size: 16px; --block-title-text-size: 16px; --button-small-text-size: 16px;
                 --checkbox-label-text-size: 16px; --section-header-text-size: 16px; }
/* (!important: gradio repeats every rule above under its container's classes, which outweigh body.classroom) */
body.classroom #header #title { flex: 0 0 380px !important; }
body.classroom #title p { font-size: 1.3rem !important; }
body.classroom #status h3 { font-size: 1.25rem !important; margin: 0 !important; }
body.classroom #status p, body.classroom #threshold-text p, body.classroom #lesson-label p,
body.classroom #step-presets-label p, body.classroom #time-steps label { font-size: 1rem !important; }
body.classroom [data-testid=block-label] { font-size: 16px !important; }
body.classroom .toast-body, body.classroom .toast-title, body.classroom .toast-text { font-size: 16px !important; }
"""
