"""Whole runs for the comparisons: this session's seed, sampler, steps, grid and spiking time steps T run from x_T to
the end at another threshold scale, or with the ANN counterpart, from the same noise. Finished runs are cached in the
session.

Each comparison exists twice: ``compare_scales(...)`` returns the result, ``compare_scales_steps(...)`` is a
generator that yields after every denoising step and returns the same result (the app iterates it, so that a
cancelled request stops at the next step)."""
from __future__ import annotations

from typing import Callable, Generator

import numpy as np

from ..energy import EnergyMeter
from ..pipeline import SpikingDiffusionPipeline
from .registry import ModelRegistry
from .session import Session, numpy_f32
from .validation import check_scale

Progress = Callable[[float, str], None]
#: what the ``*_steps`` generators yield after every denoising step: (fraction done, what is running)
Tick = tuple[float, str]


def _drain(gen: Generator[Tick, None, dict], progress: Progress | None) -> dict:
    """Run a ``*_steps`` generator to its end, reporting its ticks; returns its result."""
    while True:
        try:
            frac, desc = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(frac, desc)


def final_image_steps(sess: Session, threshold_scale, pipe: SpikingDiffusionPipeline | None = None,
                      checkpoint: str | None = None, desc: str = "",
                      span: tuple[float, float] = (0.0, 1.0)) -> Generator[Tick, None, tuple[np.ndarray, dict]]:
    """``final_image`` one denoising step at a time: yields (fraction done mapped into ``span``, ``desc``) after
    every step, so that a caller can stop between steps (a cancelled request); returns what ``final_image`` does."""
    return (yield from _final_image_steps(sess, check_scale(threshold_scale), pipe, checkpoint, desc, span))


def _final_image_steps(sess: Session, scale: float, pipe: SpikingDiffusionPipeline | None, checkpoint: str | None,
                       desc: str, span: tuple[float, float]) -> Generator[Tick, None, tuple[np.ndarray, dict]]:
    """``final_image_steps`` with the scale checked."""
    with sess.lock:
        sess.require()
        s = sess.settings
        T = s.spiking_steps if pipe is None or pipe is sess.pipe else pipe.config.time_steps
        pipe = pipe or sess.pipe
        key = sess.final_key(scale, checkpoint)
        hit = sess.cached_final(key)
    if hit is not None:
        return hit
    meter = EnergyMeter()
    out = None
    lo, hi = span
    sched = pipe.scheduler_for(s.sampler, s.num_steps)
    for out in pipe.run_steps(sched, pipe.initial_noise(s.seed, s.grid), s.seed, scale, T, meter=meter):
        yield lo + (hi - lo) * (out.index + 1) / out.num_steps, desc
    x = numpy_f32(out.sample)
    rep = meter.report(pipe.config)
    result = {"sops": rep.total_sops, "energy_mj": rep.energy_mj, "ann_mj": rep.ann_energy_mj}
    with sess.lock:
        if sess.settings == s:
            sess.remember_final(key, x, result)
    return x, dict(result)


def final_image(sess: Session, threshold_scale, pipe: SpikingDiffusionPipeline | None = None,
                checkpoint: str | None = None, progress: Progress | None = None,
                desc: str = "") -> tuple[np.ndarray, dict]:
    """The final sample (model space, float32 [B, C, H, W]) of the session's settings run at one threshold scale
    from the start, and its energy per image ({"sops", "energy_mj", "ann_mj"}).

    Args:
        pipe, checkpoint: another model (the ANN counterpart, at its own T), same seed and noise. Default: the
            session's.
        progress: called with (fraction done, ``desc``) after every step.
    """
    return _drain(final_image_steps(sess, threshold_scale, pipe, checkpoint, desc), progress)


def compare_scales_steps(sess: Session, threshold_scale) -> Generator[Tick, None, dict]:
    """``compare_scales`` one denoising step at a time (see ``final_image_steps``)."""
    scale = check_scale(threshold_scale)
    sess.require()
    a, ea = yield from _final_image_steps(sess, 1.0, None, None, "scale 1.000", (0.0, 0.5))
    b, eb = yield from _final_image_steps(sess, scale, None, None, f"scale {scale:.3f}", (0.5, 1.0))
    return {"base": a, "scaled": b, "scale": scale, "base_energy": ea, "scaled_energy": eb,
            "mean_abs_diff": float(np.abs(a - b).mean())}


def compare_scales(sess: Session, threshold_scale, progress: Progress | None = None) -> dict:
    """Final images at scale 1.0 and at ``threshold_scale`` from the same seed and noise: {"base", "scaled",
    "scale", "base_energy", "scaled_energy", "mean_abs_diff"}."""
    return _drain(compare_scales_steps(sess, threshold_scale), progress)


def compare_ann_steps(sess: Session, registry: ModelRegistry, threshold_scale=1.0) -> Generator[Tick, None, dict]:
    """``compare_ann`` one denoising step at a time (see ``final_image_steps``)."""
    scale = check_scale(threshold_scale)
    sess.require()
    name = sess.settings.checkpoint
    if not sess.spiking:
        raise ValueError(f"{name} is itself an ANN: start a trajectory with a spiking checkpoint to compare it with "
                         "its ANN counterpart")
    ann_name = registry.ann_counterpart(name)
    if ann_name is None:
        raise ValueError(f"no ANN counterpart checkpoint for {name}: looked for the card's ann_counterpart and for "
                         "<data set>-ann")
    ann_pipe = registry.get(ann_name)
    c, ca = sess.pipe.config, ann_pipe.config
    if (c.image_channels, c.image_size) != (ca.image_channels, ca.image_size):
        raise ValueError(f"{ann_name} makes {ca.image_size}x{ca.image_size}x{ca.image_channels} images but {name} "
                         f"makes {c.image_size}x{c.image_size}x{c.image_channels}: they cannot start from the same "
                         "noise")
    snn, es = yield from _final_image_steps(sess, scale, None, None, name, (0.0, 0.5))
    ann, ea = yield from _final_image_steps(sess, 1.0, ann_pipe, ann_name, ann_name, (0.5, 1.0))
    ratio = es["energy_mj"] / ea["energy_mj"] if ea["energy_mj"] else float("nan")
    return {"snn": snn, "ann": ann, "scale": scale, "snn_energy": es, "ann_energy": ea, "ann_name": ann_name,
            "energy_ratio": ratio}


def compare_ann(sess: Session, registry: ModelRegistry, threshold_scale=1.0,
                progress: Progress | None = None) -> dict:
    """This model (at ``threshold_scale``) and its ANN counterpart from the same seed and noise: {"snn", "ann",
    "scale", "snn_energy", "ann_energy", "ann_name", "energy_ratio"}. Raises ValueError for an ANN session, a
    checkpoint without a counterpart, or one whose images have another shape."""
    return _drain(compare_ann_steps(sess, registry, threshold_scale), progress)
