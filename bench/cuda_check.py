"""The denoiser on CUDA against the CPU: the same images within a tolerance, and how many spikes flip.

    python bench/cuda_check.py [--checkpoints fmnist-sdm-t4 fmnist-sdm-t4-large] [--steps 50] [--grid 16] [--no-tf32]

For each checkpoint, one DDIM trajectory (seed 0) is run on the CPU and on CUDA from the same initial noise (the
pipeline draws every noise on the CPU and moves it, so both start alike). It prints the largest and the mean
absolute difference of the final images in [0, 1], and, over a recorded trajectory at batch 1, how many recorded
spikes differ: a membrane potential a rounding error away from the threshold may fire on one device and not on the
other, and the trajectories may then drift apart a little. Also the median time of one trajectory on each device.
Needs a CUDA device; on a machine without one it says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdm  # noqa: E402
from sdm.pipeline import to_unit  # noqa: E402


def final(pipe, grid: int, steps: int) -> np.ndarray:
    out = None
    for out in pipe.steps(seed=0, num_inference_steps=steps, batch_size=grid):
        pass
    return to_unit(out.sample)


def spikes(pipe, steps: int) -> list[np.ndarray]:
    rec = []
    for out in pipe.steps(seed=0, num_inference_steps=steps, record=True):
        rec += [np.asarray(f.spikes) for f in out.probes.values()]
    return rec


def timed(fn, repeats: int, cuda: bool) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def check(name: str, tf32: bool, args) -> dict:
    cpu, gpu = sdm.load_pipeline(name), sdm.load_pipeline(name, device="cuda")
    torch.backends.cudnn.allow_tf32 = tf32
    a, b = final(cpu, args.grid, args.steps), final(gpu, args.grid, args.steps)
    diff = np.abs(a - b)
    sa, sb = spikes(cpu, args.steps), spikes(gpu, args.steps)
    flips = int(sum((x != y).sum() for x, y in zip(sa, sb)))
    total = int(sum(x.size for x in sa))
    return {"grid": args.grid, "steps": args.steps, "tf32": tf32,
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "images_within_0.01": int((diff.reshape(len(diff), -1).max(1) < 0.01).sum()),
            "spike_flips": flips, "spikes_recorded": total, "flip_share": flips / max(total, 1),
            "cpu_s_per_trajectory": timed(lambda: final(cpu, args.grid, args.steps), args.repeats, False),
            "cuda_s_per_trajectory": timed(lambda: final(gpu, args.grid, args.steps), args.repeats, True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", default=["fmnist-sdm-t4"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--no-tf32", action="store_true",
                    help="also run CUDA with cuDNN's TF32 convolutions off (torch allows them by default)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("cuda_check: no CUDA device here", file=sys.stderr)
        return 2
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "checkpoints": {}}
    for name in args.checkpoints:
        for tf32 in ([True, False] if args.no_tf32 else [True]):
            label = name + ("" if tf32 else " (TF32 off)")
            r = results["checkpoints"][label] = check(name, tf32, args)
            print(f"{label}: grid {args.grid}, DDIM {args.steps}: final images max |cpu - cuda| "
                  f"{r['max_abs_diff']:.4f}, mean {r['mean_abs_diff']:.5f}; {r['images_within_0.01']}/{args.grid} "
                  f"images within 0.01; recorded spikes flipped {r['spike_flips']} of {r['spikes_recorded']} "
                  f"({100 * r['flip_share']:.4f}%); one trajectory {r['cpu_s_per_trajectory']:.2f} s on the CPU "
                  f"({torch.get_num_threads()} threads), {r['cuda_s_per_trajectory']:.2f} s on CUDA", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
