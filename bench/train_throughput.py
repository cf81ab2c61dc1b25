"""Training throughput: images/s of one optimizer step (DDPM loss, Adam, batch 64) for the spiking UNet and its
ANN counterpart built from the same config, fp32 and bf16 autocast, and the SNN/ANN ratio. Same step function as
``python -m sdm.train`` (sdm.train.train_step). Run it on an otherwise idle machine.

    python bench/train_throughput.py [--batch-size 64] [--repeats 15] [--threads 2] [--checkpoint NAME]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdm  # noqa: E402
from sdm import DiffusionConfig, DDPMScheduler, ModelConfig, SpikingUNet  # noqa: E402
from sdm.train import train_step  # noqa: E402


def images_per_s(cfg: ModelConfig, batch: int, repeats: int, bf16: bool) -> float:
    torch.manual_seed(0)
    model = SpikingUNet(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sched = DDPMScheduler(DiffusionConfig())
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    x0 = torch.rand(batch, cfg.image_channels, cfg.image_size, cfg.image_size) * 2 - 1

    def step():
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        train_step(model, opt, sched.add_noise(x0, noise, t), t, noise, autocast, 1.0, model.parameters())

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--checkpoint", help="use this checkpoint's architecture (default: sdm.ModelConfig())")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = sdm.load_pipeline(args.checkpoint).config.replace(tsm=False) if args.checkpoint else ModelConfig()
    ann_cfg = cfg.replace(neuron="ann", tsm=False)
    print(f"architecture: {args.checkpoint or 'sdm.ModelConfig() defaults'}; base {cfg.base_channels}, mult "
          f"{cfg.channel_mult}, {sdm.count_parameters(SpikingUNet(cfg)) / 1e6:.2f}M params, {cfg.neuron} T={cfg.T}; "
          f"batch {args.batch_size}, {args.repeats} timed steps each, torch threads {torch.get_num_threads()}")
    print("| precision | SNN images/s | ANN images/s | SNN/ANN time per step |")
    print("|---|---|---|---|")
    rows = {}
    for bf16 in (False, True):
        s = images_per_s(cfg, args.batch_size, args.repeats, bf16)
        a = images_per_s(ann_cfg, args.batch_size, args.repeats, bf16)
        rows[bf16] = (s, a)
        print(f"| {'bf16 autocast' if bf16 else 'fp32'} | {s:.1f} | {a:.1f} | {a / s:.2f} |")
    print(f"bf16 speed-up: SNN {rows[True][0] / rows[False][0]:.2f}x, ANN {rows[True][1] / rows[False][1]:.2f}x")


if __name__ == "__main__":
    main()
