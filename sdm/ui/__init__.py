"""What app.py needs from gradio beyond its public API: the patches to gradio's internals (``gradio_patches``), the
input components that hand their value to the explorer's validator unconverted (``components``) and the error
messages of the handlers (``errors``). Imports gradio; nothing in ``sdm.explorer`` imports this package."""
