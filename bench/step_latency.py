"""Median milliseconds of one denoising step at batch 1: SNN with recording off / on, and its ANN counterpart.

    python bench/step_latency.py [--repeats 50] [--checkpoint NAME] [--device cuda]

Without --checkpoint it uses the default model configuration (sdm.ModelConfig()) with random weights; the
timing does not depend on the weights except through the firing rates, so a trained checkpoint is the fairer
input when one exists. Both models run the same code path: BatchNorm folded, no autograd, one pipeline.denoise().
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
from sdm import ModelConfig, SpikingDiffusionPipeline, SpikingUNet  # noqa: E402


def median_ms(fn, repeats: int, device: str = "cpu") -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--checkpoint", help="time this checkpoint (and an ANN built from its config)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        snn = sdm.load_pipeline(args.checkpoint, device=dev)
        cfg = snn.config
    else:
        cfg = ModelConfig()
        model = SpikingUNet(cfg)
        torch.nn.init.normal_(model.out.conv.weight, std=0.05)
        snn = SpikingDiffusionPipeline(model.to(dev))
    ann = SpikingDiffusionPipeline(SpikingUNet(cfg.replace(neuron="ann", tsm=False)).to(dev))
    x = torch.randn(args.batch, cfg.image_channels, cfg.image_size, cfg.image_size, device=dev)
    t = 500
    off = median_ms(lambda: snn.denoise(x, t, record=False), args.repeats, dev)
    on = median_ms(lambda: snn.denoise(x, t, record=True), args.repeats, dev)
    a = median_ms(lambda: ann.denoise(x, t), args.repeats, dev)
    print(f"model: {args.checkpoint or 'default config, random weights'}; {cfg.neuron} T={cfg.T}, "
          f"{sdm.count_parameters(snn.model) / 1e6:.3f}M params, {cfg.image_size}x{cfg.image_size}, "
          f"device {dev}, torch threads {torch.get_num_threads()}, batch {args.batch}, {args.repeats} repeats")
    print(f"SNN step, recording off: {off:7.2f} ms (median)")
    print(f"SNN step, recording on : {on:7.2f} ms (median)   goal <= 60 ms")
    print(f"ANN step               : {a:7.2f} ms (median)")
    print(f"SNN/ANN time ratio     : {off / a:7.2f}   (goal <= T = {cfg.T})")
    print(f"recording overhead     : {on / off:7.2f}x")


if __name__ == "__main__":
    main()
