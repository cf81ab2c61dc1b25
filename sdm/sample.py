"""Generate images from a checkpoint.

    python -m sdm.sample --checkpoint fmnist-sdm-t4 --n 64 --steps 50 --sampler ddim --threshold-scale 1.0 --seed 0 --out grid.png

--out decides the format: .npy (floats in [0, 1], [n, C, H, W]), .png (a grid) or .gif (the denoising trajectory
of all n images as a grid per step).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .pipeline import load_pipeline, to_unit
from . import imaging
from .export import write_gif, write_png


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdm.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="fmnist-sdm-t4", help="a name under checkpoints/ or a folder")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--steps", type=int, default=50, help="inference steps")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--threshold-scale", type=float, default=1.0, help="threshold guidance (1.0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scale", type=int, default=2, help="pixel upscaling of PNG/GIF output")
    p.add_argument("--fps", type=int, default=10, help="GIF frames per second")
    p.add_argument("--out", required=True, help="output file: .npy, .png or .gif")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".npy", ".png", ".gif"):
        print(f"error: --out must end in .npy, .png or .gif, got {out.name!r}", file=sys.stderr)
        return 2
    try:
        pipe = load_pipeline(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(seed=args.seed, num_inference_steps=args.steps, sampler=args.sampler,
                  threshold_scale=args.threshold_scale, eta=args.eta)
    try:
        if suffix == ".gif":
            if args.n > 256:
                raise ValueError("a .gif trajectory holds at most 256 images; lower --n")
            from tqdm.auto import tqdm
            frames = []
            with tqdm(total=args.steps, desc="denoising", unit="step", file=sys.stderr) as bar:
                for step in pipe.steps(batch_size=args.n, **kwargs):
                    frames.append(imaging.image_grid(to_unit(step.sample), scale=args.scale))
                    bar.update(1)
            write_gif(frames, out, fps=args.fps)
        else:
            images = pipe.sample(n=args.n, batch_size=args.batch_size, progress=True, **kwargs)
            if suffix == ".npy":
                np.save(out, images.astype(np.float32))
            else:
                write_png(imaging.image_grid(images, scale=args.scale), out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
