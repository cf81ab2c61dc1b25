"""Server time of the explorer's interactive events: median per Step and per threshold change.

    python bench/app_latency.py                                  # default checkpoint (fmnist-sdm-t4, else the first)
    python bench/app_latency.py --checkpoint tiny-sdm --checkpoints-dir tests/fixtures
    python bench/app_latency.py --client                         # also through a launched app and gradio_client

"Server time" is the handler as the app runs it: the denoiser call(s), the session bookkeeping and every output
of the event built (images upscaled, plotly figures, status, JSON), including the side-by-side threshold view
(x̂₀ at scale 1.0 and at the slider's scale, their difference, the rate bars with scale 1.0 as ghost bars). The
breakdown separates the denoiser call with recording from the rest, and times two costlier cases: Step on a
trajectory run at another scale than 1.0 (each new step is re-run at 1.0 for the side-by-side view: a second
denoiser call) and Step at T = 8 spiking steps. --client adds the round trip through gradio (queue, serialisation,
the client downloading the images) on localhost, an upper bound of what a user waits for.

Targets (issue #24): threshold change <= 150 ms for the default model, with the side-by-side view.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from harness import serve_demo  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint name (default: fmnist-sdm-t4, else the first)")
    p.add_argument("--checkpoints-dir", default=None, help="folder of checkpoints (default: $SDM_CHECKPOINTS or "
                                                           "checkpoints/)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per event (after 3 warm-up calls)")
    p.add_argument("--steps", type=int, default=50, help="inference steps of the trajectory")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--grid", type=int, default=1, choices=[1, 4, 16])
    p.add_argument("--threads", type=int, default=int(os.environ.get("SDM_TORCH_THREADS", "1")),
                   help="torch intra-op threads (the app uses SDM_TORCH_THREADS, default 1)")
    p.add_argument("--client", action="store_true", help="also time the round trip through a launched app")
    return p.parse_args(argv)


def drain(events):
    """Run a streaming handler (a generator of view updates) to its end, as gradio does."""
    collections.deque(events, maxlen=1)


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def spread(times: list[float]) -> str:
    q = sorted(times)
    return f"p10 {1000 * q[len(q) // 10]:.0f} · p90 {1000 * q[(9 * len(q)) // 10]:.0f} ms"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.checkpoints_dir:
        os.environ["SDM_CHECKPOINTS"] = str(Path(args.checkpoints_dir).resolve())
    import torch
    torch.set_num_threads(args.threads)
    import app
    from sdm.explorer import ModelRegistry

    reg = ModelRegistry(args.checkpoints_dir)
    name = args.checkpoint or reg.default_name()
    if name is None:
        print(f"no checkpoints in {reg.where}", file=sys.stderr)
        return 2
    ex = app.Explorer(reg)
    pipe = reg.get(name)
    layer = app.display.default_layer(pipe)          # the layer the app opens on
    n_calls = args.repeats + 3
    steps = max(args.steps, n_calls + 2)
    print(f"checkpoint {name}: {pipe.summary()}")
    print(f"{args.sampler.upper()} {steps} steps · grid {args.grid} · torch threads {torch.get_num_threads()} · "
          f"{os.cpu_count()} CPUs · load average {os.getloadavg()[0]:.1f}")

    # ---- Step: one denoiser call + every view output
    view = ex.new_trajectory(name, 0, args.sampler, steps, 1.0, args.grid, layer, "step", [], None)
    sess = view[0]
    step_t = []
    for i in range(n_calls):
        t0 = time.perf_counter()
        drain(ex.step(1, 1.0, layer, "step", [], sess))
        if i >= 3:
            step_t.append(time.perf_counter() - t0)

    # ---- threshold change: one denoiser call with recording + x̂0, ε̂ and every neuron plot
    scales = [1.0 + 0.002 * ((i % 20) + 1) * (1 if i % 2 else -1) for i in range(n_calls)]
    thr_t = []
    for i, s in enumerate(scales):
        t0 = time.perf_counter()
        for _ in ex.set_threshold(s, layer, "step", [], sess):     # a streaming handler: drain it
            pass
        if i >= 3:
            thr_t.append(time.perf_counter() - t0)

    # ---- breakdown: the denoiser call alone (as the threshold change runs it), and the side-by-side outputs
    rec = sess.records[sess.view_index]
    x = torch.from_numpy(rec.x_t)
    den_t, side_t = [], []
    for i, s in enumerate(scales):
        t0 = time.perf_counter()
        pipe.denoise(x, rec.timestep, s, record=pipe.config.spiking, max_neurons=sess.max_neurons)
        if i >= 3:
            den_t.append(time.perf_counter() - t0)
    view_args = sess.check_view(layer, "step", [])
    for i in range(n_calls):
        t0 = time.perf_counter()
        ex.render(sess, view_args, app.TRIO_KEYS + ("rate_bars", "threshold_md"))
        if i >= 3:
            side_t.append(time.perf_counter() - t0)

    # ---- Step on a trajectory at scale 1.05 (+ the step re-run at 1.0) and at T = 8
    cases = {}
    for what, scale, T in (("Step at s = 1.05 (+ re-run at 1.0)", 1.05, None), ("Step at T = 8", 1.0, 8)):
        other = ex.new_trajectory(name, 0, args.sampler, steps, scale, args.grid, layer, "step", [], None, T)[0]
        ts = []
        for i in range(n_calls):
            t0 = time.perf_counter()
            drain(ex.step(1, scale, layer, "step", [], other))
            if i >= 3:
                ts.append(time.perf_counter() - t0)
        cases[what] = ts
        other.close()

    print()
    print(f"Step              median {median_ms(step_t):6.1f} ms  ({spread(step_t)})")
    print(f"threshold change  median {median_ms(thr_t):6.1f} ms  ({spread(thr_t)})   target <= 150 ms")
    print(f"  of which the denoiser call with recording: median {median_ms(den_t):.1f} ms; "
          f"formatting the outputs: ~{median_ms(thr_t) - median_ms(den_t):.1f} ms, of that the side-by-side "
          f"view (3 images, rate bars with ghost bars, caption): {median_ms(side_t):.1f} ms")
    for what, ts in cases.items():
        print(f"{what:34s} median {median_ms(ts):6.1f} ms  ({spread(ts)})")
    print(f"session state after {sess.num_recorded} steps: {sess.nbytes() / 2 ** 20:.2f} MB")

    if args.client:
        from gradio_client import Client

        with serve_demo(app.build_demo(app.Explorer(reg))) as url:        # in this process, on the same registry
            client = Client(url, verbose=False)
            client.predict(checkpoint=name, seed=0, sampler=args.sampler, num_steps=steps, threshold_scale=1.0,
                           grid_size=args.grid, layer=layer, api_name="/new_trajectory")
            cs, ct = [], []
            for i in range(n_calls):
                t0 = time.perf_counter()
                client.predict(n_steps=1, threshold_scale=1.0, layer=layer, api_name="/step")
                if i >= 3:
                    cs.append(time.perf_counter() - t0)
            for i, s in enumerate(scales):
                t0 = time.perf_counter()
                client.predict(threshold_scale=s, layer=layer, api_name="/set_threshold")
                if i >= 3:
                    ct.append(time.perf_counter() - t0)
            print()
            print(f"through gradio_client (localhost round trip, images downloaded):")
            print(f"  /step           median {median_ms(cs):6.1f} ms  ({spread(cs)})")
            print(f"  /set_threshold  median {median_ms(ct):6.1f} ms  ({spread(ct)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
