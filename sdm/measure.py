"""Measure a pipeline: sample n images and score them, as sdm.evaluate stores them in card["metrics"].

    ev = make_evaluator(dataset_of(pipe))                       # sdm.metrics
    metrics, images = evaluate_pipeline(pipe, ev, n=1000)        # FID, coverage, confidence, energy; a threshold
                                                                 # sweep and the ANN counterpart on request
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

import numpy as np

from .checkpoints import card_dataset
from .data import available_datasets, canonical_data_name
from .metrics import Evaluator

ENERGY_IMAGES = 8           # images whose trajectories are metered for the energy estimate


def dataset_of(pipe) -> str:
    """The data set a checkpoint was trained on, from its card (``model.dataset``)."""
    data = card_dataset(pipe.card)
    if not data or canonical_data_name(data) not in available_datasets():
        raise ValueError(f"checkpoint {pipe.name!r}: its card names no labelled data set (got {data!r}); "
                         f"pass --data (one of {', '.join(available_datasets())})")
    return canonical_data_name(data)


def _sig(x: float, digits: int = 5) -> float:
    """Round to significant digits, for readable cards."""
    return float(f"{x:.{digits}g}")


def _energy(pipe, seed: int, steps: int, sampler: str, threshold_scale: float, images: int,
            time_steps: int | None = None) -> dict:
    """Energy per generated image (paper Eqs. 19-20), metered over the trajectories of the first ``images`` seeds."""
    rep = pipe.energy(seed=seed, threshold_scale=threshold_scale, num_inference_steps=steps, sampler=sampler,
                      batch_size=images, time_steps=time_steps)
    if pipe.config.spiking:
        return {"sops_per_image": _sig(rep.total_sops), "snn_mj": _sig(rep.energy_mj),
                "ann_mj": _sig(rep.ann_energy_mj), "ratio": _sig(rep.ratio, 4),
                "mean_firing_rate": _sig(rep.mean_firing_rate, 4), "images_measured": images}
    return {"macs_per_image": _sig(rep.snn_macs), "ann_mj": _sig(rep.energy_mj), "images_measured": images}


def _threshold_sweep(pipe, evaluator: Evaluator, images: np.ndarray, threshold_scale: float,
                     sweep_scales: Sequence[float], sweep_n: int, kw: dict) -> dict:
    """Score ``sweep_n`` samples at each threshold-guidance scale, all from the seed of ``kw`` (``pipe.sample``'s
    options); ``images`` are the main run's, at ``threshold_scale``. Returns the card's sweep keys."""
    rows = []
    scales = sorted(set(float(x) for x in sweep_scales))
    bar = None
    if kw["progress"]:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(scales), desc="threshold sweep", unit="scale", file=sys.stderr)
    for scale in scales:
        # image i depends only on (seed, i): the main run's first sweep_n images are this scale's images
        imgs = images[:sweep_n] if scale == threshold_scale and sweep_n <= len(images) else \
            pipe.sample(n=sweep_n, threshold_scale=scale, **kw)
        r = evaluator.score(imgs)
        rows.append({"scale": scale, "fid": round(r["fid"], 4), "coverage": r["coverage"],
                     "mean_confidence": round(r["mean_confidence"], 4)})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(scale=scale, fid=f"{r['fid']:.2f}")
    if bar is not None:
        bar.close()
    best = min(rows, key=lambda r: r["fid"])
    return {"threshold_sweep": rows, "sweep_n": sweep_n, "best_scale": best["scale"], "best_fid": best["fid"]}


def evaluate_pipeline(pipe, evaluator: Evaluator, n: int = 1000, seed: int = 0, steps: int = 50,
                      sampler: str = "ddim", threshold_scale: float = 1.0, batch_size: int = 64,
                      sweep_scales: Sequence[float] | None = None, sweep_n: int = 500, compare=None,
                      energy: bool = True, energy_images: int = ENERGY_IMAGES,
                      progress: bool = False, time_steps: int | None = None) -> tuple[dict, np.ndarray]:
    """Generate ``n`` images and measure them.

    Args:
        pipe: a SpikingDiffusionPipeline.
        evaluator: the :class:`Evaluator` of its data set.
        n: samples for FID, coverage and confidence (>= 2).
        seed, steps, sampler, threshold_scale, batch_size: passed to ``pipe.sample``.
        sweep_scales: threshold-guidance scales to sweep (spiking checkpoints only), ``sweep_n`` samples each, all
            from the same seed so that every scale starts from the same noise.
        compare: the ANN counterpart's pipeline, sampled on the same seeds; or None.
        energy: meter ``energy_images`` trajectories for the energy per image.
        time_steps: spiking time steps T of every denoiser call (None: the trained T; a spiking checkpoint's only).
    Returns:
        (metrics dict as stored in card["metrics"], the images ``[n, C, H, W]`` in [0, 1])
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 for a Gaussian fit, got {n}")
    c = pipe.config
    evaluator.check_shape(c.image_channels, c.image_size, f"checkpoint {pipe.name!r}")
    if sweep_scales and not c.spiking:
        raise ValueError(f"checkpoint {pipe.name!r} is an ANN: threshold guidance needs a spiking checkpoint")
    if sweep_scales and sweep_n < 2:
        raise ValueError(f"sweep_n must be >= 2, got {sweep_n}")
    if time_steps is not None and not c.spiking:
        raise ValueError(f"checkpoint {pipe.name!r} is an ANN: --time-steps needs a spiking checkpoint")
    t0 = time.time()
    kw = dict(seed=seed, num_inference_steps=steps, sampler=sampler, batch_size=batch_size, progress=progress,
              time_steps=time_steps)
    images = pipe.sample(n=n, threshold_scale=threshold_scale, **kw)
    s = evaluator.score(images)
    m = {"fid": round(s["fid"], 4), "fid_n": n, "fid_features": evaluator.space.describe(),
         "fid_reference": evaluator.reference_name, "coverage": s["coverage"],
         "coverage_min_share": evaluator.min_share,
         "class_histogram": dict(zip(evaluator.class_names, s["histogram"])),
         "mean_confidence": round(s["mean_confidence"], 4), "sampler": sampler, "steps": steps, "seed": seed,
         "threshold_scale": threshold_scale}
    if time_steps is not None:
        m["time_steps"] = int(time_steps)
    if sweep_scales:
        m.update(_threshold_sweep(pipe, evaluator, images, threshold_scale, sweep_scales, sweep_n, kw))
    if energy:
        m["energy"] = _energy(pipe, seed, steps, sampler, threshold_scale, min(energy_images, n), time_steps)
    if compare is not None:
        cc = compare.config
        evaluator.check_shape(cc.image_channels, cc.image_size, f"checkpoint {compare.name!r}")
        other = compare.sample(n=n, threshold_scale=1.0, **{**kw, "time_steps": None})
        o = evaluator.score(other)
        m["ann_compare"] = {
            "checkpoint": compare.name, "fid": round(o["fid"], 4), "coverage": o["coverage"],
            "mean_confidence": round(o["mean_confidence"], 4),
            "class_agreement": _sig(float((o["predictions"] == s["predictions"]).mean()), 4),
            "paired_mse": _sig(float(((other - images) ** 2).mean()), 4),
        }
        if energy:
            m["ann_compare"]["energy"] = _energy(compare, seed, steps, sampler, 1.0, min(energy_images, n))
    m["eval_wall_time_s"] = round(time.time() - t0, 1)
    return m, images
