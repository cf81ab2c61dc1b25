"""Conversion error of an ANN-to-SNN checkpoint, per diffusion timestep: the mean squared error of the noise
predictions of the quantised ANN (the source), of the converted SNN, and between the two, on the same noisy test
images. It splits a converted model's loss into what the quantised ANN already loses and what the conversion adds,
and shows where in t the conversion hurts (small t, where the prediction must resolve fine detail).

    python bench/conversion_error.py --checkpoint fmnist-ann2snn-t3-ft [--n 64] [--timesteps 20,100,300,600,900]

The source quantised ANN is the one the checkpoint's card names (conversion.source), or --source.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdm.checkpoints import load_checkpoint, resolve_checkpoint  # noqa: E402
from sdm.data import load_dataset  # noqa: E402
from sdm.scheduling_ddpm import DDPMScheduler  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a converted SNN (its card has a conversion block)")
    ap.add_argument("--source", help="the quantised ANN (default: the card's conversion.source)")
    ap.add_argument("--n", type=int, default=64, help="test images per timestep")
    ap.add_argument("--timesteps", default="20,100,300,600,900")
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        snn, diffusion, card = load_checkpoint(resolve_checkpoint(args.checkpoint))
        source = args.source or (card.get("conversion") or {}).get("source")
        if not source:
            raise ValueError(f"{args.checkpoint} has no conversion block in its card: pass --source")
        qann, _, qcard = load_checkpoint(resolve_checkpoint(source))
        data = load_dataset(qcard.get("model", {}).get("dataset", "fmnist"), "test", args.data_dir)
        steps = [int(t) for t in args.timesteps.split(",")]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    snn.fuse_batchnorm()
    qann.eval()
    sched = DDPMScheduler(diffusion)
    x0 = data.images[: args.n]
    print(f"{args.checkpoint} (T={snn.cfg.T}) against {source}, {len(x0)} test images per timestep")
    print("| t | MSE(quantised ANN, noise) | MSE(SNN, noise) | MSE(SNN, quantised ANN) | conversion share |")
    print("|---|---|---|---|---|")
    shares = []
    for t in steps:
        gen = torch.Generator().manual_seed(t)
        noise = torch.randn(x0.shape, generator=gen)
        tt = torch.full((len(x0),), t)
        xt = sched.add_noise(x0, noise, tt)
        with torch.no_grad():
            eq, es = qann(xt, tt), snn(xt, tt)
        mq = float(((eq - noise) ** 2).mean())
        ms = float(((es - noise) ** 2).mean())
        d = float(((es - eq) ** 2).mean())
        share = (ms - mq) / ms if ms > 0 else 0.0
        shares.append(share)
        print(f"| {t} | {mq:.4f} | {ms:.4f} | {d:.4f} | {share:+.0%} |")
    print(f"median share of the SNN's loss added by the conversion: {statistics.median(shares):+.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
