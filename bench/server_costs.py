"""What one image-step and one streamed no-change update cost the server, at one torch thread (as app.py runs).

    python bench/server_costs.py [--checkpoint fmnist-sdm-t4] [--repeats 20]

Prints medians, measured in this one run:
  1. a denoiser call per image, at batch 1 and batched (2, 4, 8, 16 images of different sessions and diffusion
     steps, as ``DenoiserBatcher`` computes them), unrecorded (the slider's generated image) and recorded with an
     energy meter (Run to end), and the ratio to batch 1;
  2. gradio's postprocessing of one streamed no-change view (the 18 outputs of Run to end, all ``gr.skip()``),
     as gradio does it and with ``sdm.ui.gradio_patches.cheap_skips``.
Run it on an idle machine: every figure is wall time on one core.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import sdm  # noqa: E402
from sdm.energy import EnergyMeter  # noqa: E402


def median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def denoiser_costs(name: str, repeats: int) -> None:
    pipe = sdm.load_pipeline(name)
    T = pipe.config.time_steps
    print(f"1. {name}, T = {T}, one torch thread: ms per image and denoiser call")
    print(f"   {'images':>6} {'unrecorded':>11} {'ratio':>6} {'recorded':>9} {'ratio':>6}")
    base = {}
    for b in (1, 2, 4, 8, 16):
        x = torch.cat([pipe.initial_noise(s, 1) for s in range(b)])
        t = torch.tensor([999 - 61 * s for s in range(b)])
        plain = median_s(lambda: pipe.run_denoiser(x, t, 1.0, T, meter=EnergyMeter()), repeats) / b * 1000
        rec = median_s(lambda: pipe.run_denoiser(x, t, 1.0, T, record=True, meter=EnergyMeter()), repeats) / b * 1000
        base.setdefault("plain", plain)
        base.setdefault("rec", rec)
        print(f"   {b:>6} {plain:>11.2f} {plain / base['plain']:>6.2f} {rec:>9.2f} {rec / base['rec']:>6.2f}")


def skip_costs(repeats: int) -> None:
    os.environ.setdefault("SDM_WARM_PRESETS", "0")
    from gradio.blocks import Blocks
    from gradio.state_holder import SessionState
    from conftest import FIXTURES, import_app
    from sdm.explorer import ModelRegistry
    from sdm.ui.outputs import SKIP_VIEW
    app = import_app()
    demo = app.build_demo(app.Explorer(ModelRegistry(FIXTURES)))
    fn = next(f for f in demo.fns.values() if f.api_name == "run_to_end")
    state = SessionState(demo)
    gradio = median_s(lambda: asyncio.run(Blocks.postprocess_data(demo, fn, list(SKIP_VIEW), state)), repeats)
    patched = median_s(lambda: asyncio.run(demo.postprocess_data(fn, list(SKIP_VIEW), state)), repeats)
    print(f"2. one streamed no-change view ({len(SKIP_VIEW)} skipped outputs): gradio {gradio * 1000:.2f} ms, "
          f"with cheap_skips {patched * 1000:.3f} ms (ratio {patched / gradio:.4f}; both include asyncio.run)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="fmnist-sdm-t4")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    denoiser_costs(args.checkpoint, args.repeats)
    skip_costs(args.repeats)


if __name__ == "__main__":
    main()
