"""Write what the explorer shows to files: GIF / MP4 animations, PNG images, and NPZ recordings.

Frames and images may be given as uint8 ``[H, W, 3]`` (what :mod:`sdm.imaging` returns) or as float
``[C, H, W]`` in [0, 1] (C = 1 or 3; display space, see ``sdm.imaging.to_display``). Every writer returns the
path it wrote, as a string. NPZ files never contain pickles.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["to_uint8_hwc", "write_gif", "write_mp4", "write_png", "save_npz", "load_npz"]

#: record names that ``np.savez_compressed`` would take as its own arguments (or that hold the metadata)
RESERVED_KEYS = ("metadata", "file", "allow_pickle")


def to_uint8_hwc(image, what: str = "image") -> np.ndarray:
    """Convert one image to uint8 ``[H, W, 3]``.

    Accepted: uint8 ``[H, W, 3]``, ``[H, W, 1]`` or ``[H, W]``; float ``[C, H, W]`` in [0, 1] with C = 1 or 3
    (also ``[H, W]``, and ``[H, W, C]`` when that is unambiguous). Floats are clipped to [0, 1].
    Raises ValueError naming the problem for anything else.
    """
    a = np.asarray(image)
    if a.dtype == np.uint8:
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3):
            raise ValueError(f"{what}: a uint8 image must be [H, W, 3] (or [H, W]), got shape {tuple(a.shape)}")
        out = a
    elif np.issubdtype(a.dtype, np.floating):
        if a.ndim == 2:
            a = a[None]
        if a.ndim == 3 and a.shape[0] in (1, 3):
            a = a.transpose(1, 2, 0)
        elif a.ndim == 3 and a.shape[2] in (1, 3):
            pass                                              # [H, W, C] float, unambiguous
        else:
            raise ValueError(f"{what}: a float image must be [C, H, W] with C = 1 or 3 (values in [0, 1]), "
                             f"got shape {tuple(a.shape)}")
        out = np.round(np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"{what}: expected uint8 [H, W, 3] or float [C, H, W] in [0, 1], got dtype {a.dtype}")
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError(f"{what}: image is empty (shape {tuple(np.shape(image))})")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def _frames(frames) -> list[np.ndarray]:
    if frames is None:
        raise ValueError("no frames to write: got None")
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to write: the frame list is empty")
    out = [to_uint8_hwc(f, f"frame {i}") for i, f in enumerate(frames)]
    for i, f in enumerate(out):
        if f.shape != out[0].shape:
            raise ValueError(f"frame {i} is {f.shape[1]}x{f.shape[0]} pixels but frame 0 is "
                             f"{out[0].shape[1]}x{out[0].shape[0]}; all frames must have the same size")
    return out


def _check_fps(fps) -> float:
    try:
        f = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a positive number, got {fps!r}") from None
    if not np.isfinite(f) or f <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return f


def _prepare_path(path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _check_hold(hold_last_s) -> float:
    try:
        h = float(hold_last_s)
    except (TypeError, ValueError):
        raise ValueError(f"hold_last_s must be a number of seconds >= 0, got {hold_last_s!r}") from None
    if not np.isfinite(h) or h < 0:
        raise ValueError(f"hold_last_s must be a number of seconds >= 0, got {hold_last_s!r}")
    return h


def write_gif(frames: Sequence, path, fps: float = 10, hold_last_s: float = 0.0) -> str:
    """Write an animated GIF that loops forever (imageio / Pillow).

    Args:
        frames: list of uint8 ``[H, W, 3]`` or float ``[C, H, W]`` in [0, 1], all the same size.
        path: output file (parent folders are created).
        fps: frames per second (GIF stores delays in 1/100 s, so very high rates are rounded).
        hold_last_s: extra seconds the last frame stays before the loop starts again (its own delay grows).

    Note: the GIF encoder merges consecutive *identical* frames into one longer frame (playback time is
    unchanged), so such a GIF reads back with fewer frames.
    """
    import imageio.v3 as iio

    fr = _frames(frames)
    f = _check_fps(fps)
    hold = _check_hold(hold_last_s)
    p = _prepare_path(path)
    durations = [1000.0 / f] * len(fr)
    durations[-1] += 1000.0 * hold
    iio.imwrite(p, np.stack(fr), extension=".gif", duration=durations, loop=0)
    return str(p)


def _pad_even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(frames: Sequence, path, fps: float = 10, hold_last_s: float = 0.0) -> str:
    """Write an MP4 video (OpenCV, codec 'mp4v') and check that it reads back with every frame.

    Args:
        frames: list of uint8 ``[H, W, 3]`` or float ``[C, H, W]`` in [0, 1], all the same size.
            Odd widths / heights are padded by one pixel (edge colour) to even sizes.
        path: output file, normally ``*.mp4`` (parent folders are created).
        fps: frames per second.
        hold_last_s: the last frame is repeated for about this many extra seconds (``round(hold_last_s * fps)``
            more frames), so that a player that loops shows the result before starting again.

    Raises:
        ValueError: empty frame list, bad shapes or fps.
        RuntimeError: OpenCV cannot write the file, or the file does not read back with all frames.
    """
    import cv2

    fr = [_pad_even(f) for f in _frames(frames)]
    f = _check_fps(fps)
    fr += [fr[-1]] * int(round(_check_hold(hold_last_s) * f))
    p = _prepare_path(path)
    h, w = fr[0].shape[:2]
    writer = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), f, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open an MP4 writer for {p} (codec 'mp4v', {w}x{h} at {f} fps)")
    try:
        for frame in fr:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))      # RGB -> BGR
    finally:
        writer.release()

    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise RuntimeError(f"{p}: the MP4 just written cannot be opened by OpenCV")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count != len(fr):                          # the container count can be off: count for real
            count = 0
            while cap.read()[0]:
                count += 1
    finally:
        cap.release()
    if count != len(fr):
        raise RuntimeError(f"{p}: wrote {len(fr)} frames but the video reads back with {count}")
    return str(p)


def write_png(image, path) -> str:
    """Write one image (uint8 ``[H, W, 3]`` or float ``[C, H, W]`` in [0, 1]) as a PNG file."""
    import imageio.v3 as iio

    img = to_uint8_hwc(image)
    p = _prepare_path(path)
    iio.imwrite(p, img, extension=".png")
    return str(p)


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serialisable")


def save_npz(path, records: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None) -> str:
    """Save arrays plus JSON metadata with ``np.savez_compressed`` (no pickles).

    Args:
        path: output file, written exactly there (no ".npz" is appended).
        records: name -> array (numeric or bool; object arrays are refused). Names such as
            "down.0.res.0.conv1" are fine; "metadata", "file" and "allow_pickle" are reserved.
        metadata: JSON-serialisable dict (numpy scalars / arrays are converted), stored as a JSON string
            under the key "metadata".

    Returns:
        the path as a string. Read it back with :func:`load_npz`.
    """
    if not isinstance(records, Mapping):
        raise ValueError(f"records must be a dict name -> array, got {type(records).__name__}")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, value in records.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"record names must be non-empty strings, got {name!r}")
        if name in RESERVED_KEYS:
            raise ValueError(f"record name {name!r} is reserved (reserved: {', '.join(RESERVED_KEYS)})")
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise ValueError(f"record {name!r} has dtype object, which would need pickle; "
                             "store numeric, bool or string arrays only")
        arrays[name] = a
    try:
        meta_json = json.dumps(dict(metadata), default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata is not JSON serialisable: {e}") from None
    p = _prepare_path(path)
    with open(p, "wb") as fh:                         # a file object: numpy does not append ".npz"
        np.savez_compressed(fh, allow_pickle=False, metadata=np.array(meta_json), **arrays)
    return str(p)


def load_npz(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a file written by :func:`save_npz` (with ``allow_pickle=False``).

    Returns:
        (records, metadata): dict name -> array, and the metadata dict ({} if the file has none).
    """
    with np.load(path, allow_pickle=False) as z:
        records = {k: z[k] for k in z.files if k != "metadata"}
        metadata = json.loads(str(z["metadata"][()])) if "metadata" in z.files else {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: the 'metadata' entry is not a JSON object")
    return records, metadata
