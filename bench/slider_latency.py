"""The threshold slider after Run to end: how soon the image generated at s appears, in server time.

    python bench/slider_latency.py                         # fmnist-sdm-t4, DDIM 50, grid 1, s = 1.05 then 0.95
    python bench/slider_latency.py --grid 16 --repeats 1
    python bench/slider_latency.py --checkpoint tiny-sdm --checkpoints-dir tests/fixtures --steps 8

For each repeat, a fresh app (no shared results, no preset warming) runs a trajectory to the end at 1.0, then moves
the slider to each scale: ``Explorer.set_threshold`` drained in this process with one torch thread (as the app's
requests run), timing the first output that carries the picture at s (the side-by-side trio) and the last output,
whose session info has ``final_difference``. Then each scale again, answered from the shared results. Prints the
median seconds per case over the repeats and the final_difference. Server time only: add gradio's transport
(``bench/app_latency.py --client``) for what a browser waits.

Goals (issue 32), idle 2-core machine, DDIM 50, grid 1: first picture <= 0.5 s, final image <= 1.5 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="fmnist-sdm-t4")
    p.add_argument("--checkpoints-dir", default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--grid", type=int, default=1, choices=[1, 4, 16])
    p.add_argument("--scales", default="1.05,0.95")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    os.environ["SDM_WARM_PRESETS"] = "0"
    import torch
    torch.set_num_threads(1)
    import app
    from sdm.explorer import ModelRegistry

    scales = [float(s) for s in args.scales.split(",")]
    times: dict[str, list[float]] = {}
    diffs: dict[float, float] = {}
    trio = app.THRESHOLD_KEYS.index("img_x0")
    info = app.THRESHOLD_KEYS.index("info")
    for _ in range(args.repeats):
        ex = app.Explorer(ModelRegistry(args.checkpoints_dir) if args.checkpoints_dir else ModelRegistry())
        v = ex.new_trajectory(args.checkpoint, 0, "ddim", args.steps, 1.0, args.grid, None, "step", [], None)
        sess = v[0]
        for _ in ex.run_to_end(1.0, None, "step", [], sess):
            pass
        for again in (False, True):
            for s in scales:
                t0 = time.perf_counter()
                first = last = None
                for out in ex.set_threshold(s, None, "step", [], sess):
                    now = time.perf_counter() - t0
                    if first is None and not _is_skip(out[trio]):
                        first = now
                    last, final = now, out
                case = f"s = {s:.2f}" + (" again (shared)" if again else "")
                times.setdefault(case + ": first picture", []).append(first)
                times.setdefault(case + ": final image", []).append(last)
                diffs[s] = final[info]["final_difference"]
    print(f"slider latency: {args.checkpoint}, DDIM {args.steps}, grid {args.grid}, {args.repeats} repeat(s), "
          f"server time, 1 torch thread")
    for case, ts in times.items():
        print(f"  {case:38s} median {statistics.median(ts):6.3f} s   (max {max(ts):.3f})")
    for s, d in diffs.items():
        print(f"  final_difference at {s:.2f}: {d:.4f}")
    return 0


def _is_skip(value) -> bool:
    """A no-change update (``gr.skip()``: a dict with ``__type__`` "update" and nothing else) or nothing."""
    return value is None or (isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1)


if __name__ == "__main__":
    raise SystemExit(main())
