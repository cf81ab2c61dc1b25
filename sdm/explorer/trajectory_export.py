"""A session's trajectory as files: GIF and MP4 of x_t along the way, the current sample as PNG, and the whole
recording (images, spikes, membrane potentials, firing rates, energy) as NPZ. The writers are ``sdm.export``."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .. import export as _export
from .. import imaging
from .session import Session

MAX_EXPORT_FRAMES = 200             # GIF / MP4 frames (evenly spaced, first and last always in)
HOLD_LAST_S = 1.5                   # the final frame stays this long before the GIF / MP4 loops


def export_frames(sess: Session, max_frames: int = MAX_EXPORT_FRAMES, target_px: int = 256) -> list[np.ndarray]:
    """uint8 [H, W, 3] frames of the whole grid: x_t of every recorded step plus the current sample, each with a
    progress bar under it (so no two frames are alike). At most ``max_frames``, evenly spaced."""
    sess.require()
    states = [r.x_t for r in sess.records] + [sess.x]
    ncol = int(math.ceil(math.sqrt(sess.settings.grid)))
    scale = max(1, target_px // (ncol * sess.pipe.config.image_size))
    frames = []
    for i in imaging.pick_frames(len(states), max_frames):
        img = imaging.image_grid(imaging.to_display(states[i]), nrow=ncol, pad=2, scale=scale)
        frames.append(_with_progress_bar(img, i / max(len(states) - 1, 1)))
    return frames


def export(sess: Session, out_dir: str | Path | None = None, fps: float = 10.0,
           progress: Callable[[float, str], None] | None = None) -> dict[str, str]:
    """Write the trajectory as GIF and MP4 (the last frame held for ``HOLD_LAST_S`` before they loop), the current
    sample as PNG, and the recording as NPZ.

    Args:
        out_dir: folder for the files (None: the session's own temporary folder, emptied on each export and
            deleted by ``Session.close``).
        progress: called with (fraction done, what is being written).
    Returns:
        {"gif", "mp4", "png", "npz"} -> file path.
    """
    with sess.lock:
        sess.require()
        s = sess.settings
        if out_dir is None:
            if sess.export_dir is None:
                sess.export_dir = tempfile.mkdtemp(prefix="sdm-explorer-export-")
            out = Path(sess.export_dir)
            for old in out.iterdir():
                old.unlink(missing_ok=True)
        else:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
        stem = f"sdm_{s.checkpoint}_seed{s.seed}_{s.sampler}{s.num_steps}_grid{s.grid}_step{len(sess.records)}"
        frames = export_frames(sess)
        ncol = int(math.ceil(math.sqrt(s.grid)))
        final = imaging.image_grid(imaging.to_display(sess.x), nrow=ncol, pad=2,
                                   scale=max(1, 512 // (ncol * sess.pipe.config.image_size)))
        records, meta = npz_payload(sess)
    paths = {}
    if progress:
        progress(0.1, "GIF")
    paths["gif"] = _export.write_gif(frames, out / f"{stem}.gif", fps=fps, hold_last_s=HOLD_LAST_S)
    if progress:
        progress(0.4, "MP4")
    paths["mp4"] = _export.write_mp4(frames, out / f"{stem}.mp4", fps=fps, hold_last_s=HOLD_LAST_S)
    if progress:
        progress(0.7, "PNG and NPZ")
    paths["png"] = _export.write_png(final, out / f"{stem}.png")
    meta["frames"] = len(frames)
    paths["npz"] = _export.save_npz(out / f"{stem}.npz", records, meta)
    return paths


def npz_payload(sess: Session) -> tuple[dict[str, np.ndarray], dict]:
    """The recording as arrays (one row per recorded step) and its metadata (see the ``shapes`` entry)."""
    s = sess.settings
    recs = sess.records
    data: dict[str, np.ndarray] = {
        "step_index": np.array([r.index for r in recs], dtype=np.int32),
        "timesteps": np.array([r.timestep for r in recs], dtype=np.int32),
        "threshold_scale": np.array([r.scale for r in recs], dtype=np.float32),
        "x_t": np.stack([r.x_t for r in recs]).astype(np.float16),
        "x0": np.stack([r.x0 for r in recs]),
        "eps": np.stack([r.eps for r in recs]),
        "sample": sess.x.astype(np.float32),
        "sops": np.array([r.sops for r in recs], dtype=np.float64),
    }
    layers = [n for n in sess.layers if n in sess.num_neurons]
    if layers:
        data["firing_rate"] = np.array([[r.rates[n] for n in layers] for r in recs], dtype=np.float32)
        for n in layers:
            data[f"spikes/{n}"] = np.stack([r.spikes[n] for r in recs])          # [K, T, N] bool
            data[f"v/{n}"] = np.stack([r.v[n] for r in recs])                    # [K, T, N] float16
            data[f"neuron_index/{n}"] = np.asarray(sess.neuron_index[n], dtype=np.int64)
    cfg = sess.pipe.config
    meta = {
        "checkpoint": s.checkpoint, "seed": s.seed, "sampler": s.sampler, "num_steps": s.num_steps,
        "grid_size": s.grid, "steps_recorded": len(recs), "T": s.spiking_steps, "trained_T": cfg.time_steps,
        "neuron": cfg.neuron, "tsm": cfg.tsm, "layers": layers, "num_neurons": {n: sess.num_neurons[n] for n in layers},
        "recorded_image": 0, "max_neurons": sess.max_neurons,
        "base_threshold": {n: recs[0].thresholds[n] / recs[0].scale for n in layers} if recs and layers else {},
        "shapes": {"spikes": "[steps, T, neurons] bool", "v": "[steps, T, neurons] float16, threshold units",
                   "x_t/x0/eps": "[steps, B, C, H, W] float16, model space [-1, 1]",
                   "sample": "[B, C, H, W] float32, the sample after the last step"},
        "summary": sess.pipe.summary(),
    }
    return data, meta


def _with_progress_bar(img: np.ndarray, frac: float, height: int = 6) -> np.ndarray:
    """Append a progress bar (dark fill on light gray) under a uint8 [H, W, 3] image."""
    h, w = img.shape[:2]
    bar = np.full((height, w, 3), 225, dtype=np.uint8)
    bar[:, : int(round(frac * w))] = (0, 114, 178)
    return np.concatenate([img, bar], axis=0)
