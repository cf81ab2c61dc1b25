"""Noise-prediction error per diffusion timestep, for several checkpoints on the same noisy test images.

Shows where in t a model loses against another: the SNN against its ANN counterpart, say. Each checkpoint's
mean squared error of eps on n test images, noised at each t with the same seeded noise, and its ratio to the
reference (the last checkpoint given, or --reference).

    python bench/error_per_t.py --checkpoints fmnist-sdm-t4 fmnist-ann [--n 256] [--timesteps 10,100,500,900]

Measured (n=256): before preconditioning, fmnist-sdm-t4-vanilla's error at t=900 was 0.0048, 21x the ANN's; the
analog skip readout (--precondition) brought it to 0.00014 (docs/EXPERIMENTS.md, "Preconditioning: an analog skip of x_t").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdm.checkpoints import load_checkpoint, resolve_checkpoint  # noqa: E402
from sdm.data import load_dataset  # noqa: E402
from sdm.scheduling_ddpm import DDPMScheduler  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", required=True, help="names under checkpoints/ or folders")
    ap.add_argument("--reference", help="the checkpoint the ratios are taken against (default: the last one)")
    ap.add_argument("--n", type=int, default=256, help="test images per timestep")
    ap.add_argument("--timesteps", default="10,50,100,200,300,500,700,900,990")
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(dict.fromkeys(args.checkpoints + ([args.reference] if args.reference else [])))
    reference = args.reference or names[-1]
    try:
        loaded = {n: load_checkpoint(resolve_checkpoint(n)) for n in names}
        datasets = {card.get("model", {}).get("dataset", "fmnist") for _, _, card in loaded.values()}
        if len(datasets) != 1:
            raise ValueError(f"the checkpoints were trained on different data sets {sorted(datasets)}: compare "
                             "checkpoints of one data set")
        data = load_dataset(datasets.pop(), "test", args.data_dir)
        steps = [int(t) for t in args.timesteps.split(",")]
        diffusion = loaded[names[0]][1]
        if not all(0 <= t < diffusion.num_train_timesteps for t in steps):
            raise ValueError(f"--timesteps must lie in [0, {diffusion.num_train_timesteps})")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    models = {n: m.fuse_batchnorm() for n, (m, _, _) in loaded.items()}
    sched = DDPMScheduler(diffusion)
    x0 = data.images[: args.n]
    others = [n for n in names if n != reference]
    print(f"MSE of the predicted noise, {len(x0)} test images per timestep; ratio = checkpoint / {reference}")
    print("| t | " + " | ".join(names) + " | " + " | ".join(f"{n} / ref" for n in others) + " |")
    print("|---" * (1 + len(names) + len(others)) + "|")
    for t in steps:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        tt = torch.full((len(x0),), t)
        xt = sched.add_noise(x0, noise, tt)
        with torch.no_grad():
            mse = {n: float(((m(xt, tt) - noise) ** 2).mean()) for n, m in models.items()}
        ratios = [mse[n] / mse[reference] if mse[reference] > 0 else float("inf") for n in others]
        print(f"| {t} | " + " | ".join(f"{mse[n]:.5f}" for n in names) + " | "
              + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
