"""Display images for the SDM Explorer: tiles, upscaling, film strips with captions, signed differences.

Pure functions: numpy arrays in, ``uint8`` images ``[H, W, 3]`` (or float display images) out. Nothing here touches
the model, the file system or gradio; :mod:`sdm.export` writes what these functions return, and :mod:`sdm.viz`
draws the plotly figures.

Conventions
    * Images in *model space* are float ``[C, H, W]`` / ``[B, C, H, W]`` in [-1, 1]; display images are
      float in [0, 1]; C = 1 (gray) or 3 (RGB). :func:`to_display` converts between them.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

__all__ = ["to_display", "diff_to_rgb", "upscale", "image_grid", "pick_frames", "filmstrip"]

def to_display(x, from_model_space: bool = True) -> np.ndarray:
    """Convert images to display range: float32 ``[..., C, H, W]`` in [0, 1].

    ``from_model_space=True`` maps [-1, 1] to [0, 1] (``(x + 1) / 2``); otherwise ``x`` is taken to be in
    [0, 1] already. Values outside the range are clipped. The shape is unchanged.
    """
    a = np.asarray(x, dtype=np.float32)
    if from_model_space:
        a = (a + 1.0) * 0.5
    return np.clip(a, 0.0, 1.0)


def diff_to_rgb(diff, limit: float) -> np.ndarray:
    """A signed difference as a colour image: white at 0, orange (#D55E00) towards +limit, blue (#0072B2) towards
    -limit, saturated beyond (colour-blind safe).

    Args:
        diff: float ``[..., C, H, W]`` (C = 1, or 3: averaged) in the units of ``limit``.
        limit: the magnitude shown at full colour (> 0).
    Returns:
        float32 ``[..., 3, H, W]`` in [0, 1] (display space).
    """
    if not limit > 0:
        raise ValueError(f"limit must be > 0, got {limit!r}")
    d = np.asarray(diff, dtype=np.float32)
    if d.ndim < 3:
        raise ValueError(f"diff: expected [..., C, H, W], got shape {tuple(d.shape)}")
    a = np.clip(d.mean(axis=-3, keepdims=True) / float(limit), -1.0, 1.0)        # [..., 1, H, W]
    pos = np.array([0xD5, 0x5E, 0x00], np.float32) / 255.0
    neg = np.array([0x00, 0x72, 0xB2], np.float32) / 255.0
    shape = (1,) * (d.ndim - 3) + (3, 1, 1)
    white = np.ones(shape, np.float32)
    col = np.where(a >= 0, pos.reshape(shape), neg.reshape(shape))
    return white + np.abs(a) * (col - white)


def _to_uint8(a) -> np.ndarray:
    return np.round(np.clip(np.asarray(a, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_chw(img, what: str = "image") -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"{what}: expected a [C, H, W] image with C = 1 or 3, got shape {tuple(a.shape)}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{what}: expected a float image in [0, 1], got dtype {a.dtype}")
    return a


def _check_positive_int(value, what: str = "scale") -> int:
    """An integer >= 1: an upscale factor (``scale``, not a threshold scale) or a count (``nrow``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def upscale(img, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of a display image, for pixel-crisp small images.

    Args:
        img: float ``[C, H, W]`` in [0, 1] (C = 1 or 3; a 2-D ``[H, W]`` array is taken as gray).
        scale: integer factor >= 1; every source pixel becomes a ``scale x scale`` block.

    Returns:
        uint8 ``[H*scale, W*scale, 3]`` (gray is repeated into 3 channels).
    """
    s = _check_positive_int(scale)
    u = _to_uint8(_check_chw(img)).transpose(1, 2, 0)           # [H, W, C]
    if u.shape[2] == 1:
        u = np.repeat(u, 3, axis=2)
    if s > 1:
        u = np.repeat(np.repeat(u, s, axis=0), s, axis=1)
    return np.ascontiguousarray(u)


def _pad_colour(pad_value) -> np.ndarray:
    pv = np.asarray(pad_value, dtype=np.float32).reshape(-1)
    if pv.size not in (1, 3):
        raise ValueError(f"pad_value must be one number or 3 numbers in [0, 1], got {pad_value!r}")
    return _to_uint8(np.broadcast_to(pv, (3,)))


def image_grid(images, nrow: int | None = None, pad: int = 1, scale: int = 1,
               pad_value=1.0) -> np.ndarray:
    """Tile display images into one picture.

    Args:
        images: float ``[n, C, H, W]`` in [0, 1] (or a list of ``[C, H, W]``; one ``[C, H, W]`` is n = 1).
        nrow: images per row (as in torchvision); ``None`` -> ``ceil(sqrt(n))``, i.e. about square.
        pad: pixels of border around and between the images (in output pixels).
        scale: nearest-neighbour upscaling factor of every image.
        pad_value: border colour, gray level in [0, 1] or an RGB triple.

    Returns:
        uint8 ``[rows*(H*scale+pad)+pad, ncol*(W*scale+pad)+pad, 3]``; unused cells have the pad colour.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("image_grid: no images given")
        shapes = {np.shape(im) for im in images}
        if len(shapes) > 1:
            raise ValueError(f"image_grid: all images must have the same shape, got {sorted(shapes)}")
        images = np.stack([np.asarray(im) for im in images])
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"image_grid: expected images [n, C, H, W], got shape {tuple(a.shape)}")
    n = a.shape[0]
    if n == 0:
        raise ValueError("image_grid: no images given (n = 0)")
    s = _check_positive_int(scale)
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    if nrow is None:
        ncol = math.ceil(math.sqrt(n))
    else:
        ncol = _check_positive_int(nrow, "nrow")
    ncol = min(ncol, n)
    rows = math.ceil(n / ncol)
    tiles = [upscale(_check_chw(im, f"image_grid: image {i}"), s) for i, im in enumerate(a)]
    h, w = tiles[0].shape[:2]
    out = np.empty((rows * (h + pad) + pad, ncol * (w + pad) + pad, 3), dtype=np.uint8)
    out[...] = _pad_colour(pad_value)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = tile
    return out


def pick_frames(n: int, max_frames: int) -> list[int]:
    """Indices of at most ``max_frames`` evenly spaced frames out of ``n``, always with first and last."""
    if n < 1:
        raise ValueError("no frames given")
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 2:
        raise ValueError(f"max_frames must be an integer >= 2 (first and last frame), got {max_frames!r}")
    if n <= max_frames:
        return list(range(n))
    # spacing (n-1)/(k-1) > 1, so the rounded indices are distinct
    return [int(i) for i in np.round(np.linspace(0, n - 1, int(max_frames))).astype(int)]


def filmstrip(frames: Sequence, max_frames: int = 10, scale: int = 2, pad: int = 2,
              pad_value=1.0, captions: Sequence[str] | None = None, blank_value: float = 0.93,
              caption_px: int = 12) -> np.ndarray:
    """One row of evenly spaced frames of a sequence (e.g. the reverse diffusion x_T ... x_0).

    Args:
        frames: list of float ``[C, H, W]`` in [0, 1], all the same shape; ``None`` is an empty cell (a frame that
            does not exist, drawn in the gray ``blank_value``). At least one frame must not be None.
        max_frames: most frames to show (>= 2); the first and the last frame are always included.
        scale, pad, pad_value: as in :func:`image_grid`.
        captions: one short caption per entry of ``frames`` (e.g. "step 3 · t=939"; a newline makes two lines),
            written under the frames shown, in a strip of ``caption_px + 4`` pixels per line.
        caption_px: the captions' font size in pixels.

    Returns:
        uint8 ``[H*scale + 2*pad (+ caption strip), k*(W*scale+pad)+pad, 3]`` with k = min(len(frames), max_frames).
        :func:`pick_frames` gives the indices shown.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("filmstrip: no frames given")
    if captions is not None and len(captions) != len(frames):
        raise ValueError(f"filmstrip: {len(captions)} captions for {len(frames)} frames")
    ref = next((f for f in frames if f is not None), None)
    if ref is None:
        raise ValueError("filmstrip: every frame is None")
    idx = pick_frames(len(frames), max_frames)
    chosen = [frames[i] if frames[i] is not None else np.full(np.shape(ref), blank_value, np.float32) for i in idx]
    strip = image_grid(chosen, nrow=len(chosen), pad=pad, scale=scale, pad_value=pad_value)
    if captions is None:
        return strip
    cell = np.shape(ref)[-1] * _check_positive_int(scale) + pad
    return _caption_row(strip, [captions[i] for i in idx], cell=cell, pad=pad, font_px=caption_px)


@functools.lru_cache(maxsize=4)
def _caption_font(size: int):
    """Pillow's built-in font at ``size`` pixels (loaded once; Pillow < 10.1 has a fixed bitmap font only)."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _caption_row(strip: np.ndarray, texts: Sequence[str], cell: int, pad: int, font_px: int = 12) -> np.ndarray:
    """``strip`` with a white row under it holding one centred caption per cell (Pillow's built-in font at
    ``font_px`` pixels, ``font_px + 4`` pixels per line)."""
    return np.concatenate([strip, _caption_pixels(strip.shape[1], tuple(str(t) for t in texts), cell, pad, font_px)],
                          axis=0)


@functools.lru_cache(maxsize=256)
def _caption_pixels(w: int, texts: tuple, cell: int, pad: int, font_px: int) -> np.ndarray:
    """The caption row of ``_caption_row`` (uint8 ``[h, w, 3]``, read-only: the same captions are drawn once)."""
    from PIL import Image, ImageDraw

    lines = max(str(t).count("\n") + 1 for t in texts)
    row = Image.new("RGB", (w, lines * (font_px + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(row)
    font = _caption_font(max(8, font_px))
    for i, text in enumerate(texts):
        left, _, right, _ = draw.multiline_textbbox((0, 0), str(text), font=font, spacing=4)
        x = pad + i * cell + (cell - pad - (right - left)) / 2
        draw.multiline_text((max(0, x), 1), str(text), fill=(17, 17, 17), font=font, spacing=4, align="center")
    pixels = np.asarray(row, dtype=np.uint8).copy()
    pixels.flags.writeable = False
    return pixels
