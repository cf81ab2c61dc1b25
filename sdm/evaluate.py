"""Evaluate checkpoints: FID without downloads, class coverage, confidence, threshold guidance, SNN vs ANN, energy.

    python -m sdm.evaluate --train-classifier fmnist             # once per data set -> checkpoints/classifiers/fmnist/
    python -m sdm.evaluate --checkpoint fmnist-sdm-t4            # 1000 samples, DDIM, 50 steps -> card.json + README.md
    python -m sdm.evaluate --checkpoint fmnist-sdm-t4 --sweep    # + threshold guidance from 0.90 to 1.10
    python -m sdm.evaluate --checkpoint fmnist-sdm-t4 --sweep-only --sweep-n 200   # the sweep alone, into the card
    python -m sdm.evaluate --checkpoints fmnist-sdm-t4-vanilla fmnist-sdm-t4 fmnist-ann   # one markdown table

FID: Inception weights cannot be downloaded here, so every data set gets its own small classifier (a CNN trained on
the train split; weights and test accuracy in checkpoints/classifiers/<data>/). FID is the Frechet distance between
Gaussian fits of its penultimate features of the n generated samples and of the whole test split. These numbers are
comparable with each other, not with Inception FIDs in papers; the classifier's card holds a calibration (real
train images against the test split, and uniform noise). ``--inception-weights pt_inception-2015-12-05-6726825d.pth``
computes Inception FID instead (the architecture comes from the optional ``pytorch-fid`` package).

The same classifier's predictions on the samples give class coverage (the share of classes that receive at least 2%
of the samples) and the mean confidence (mean max-softmax). Results go into the checkpoint's card.json, its
README.md and a samples.png grid, unless --no-write.

This module is the command line and its reports; the feature classifier lives in :mod:`sdm.classifier`, the
metrics in :mod:`sdm.metrics`, and sampling a checkpoint to measure it in :mod:`sdm.measure`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .checkpoints import ann_counterpart_names, read_card, write_card
from .data import canonical_data_name, load_dataset
from .classifier import classifiers_dir, save_classifier, train_classifier
from .measure import dataset_of, evaluate_pipeline
from .metrics import Evaluator, calibrate, make_evaluator

SWEEP_SCALES = (0.90, 0.95, 0.98, 0.99, 0.995, 0.997, 0.999, 1.0, 1.001, 1.003, 1.005, 1.01, 1.02, 1.05, 1.10)
GRID_SIDE = 10              # samples.png is a GRID_SIDE x GRID_SIDE grid


def machine_description() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


# ====================================================================== reporting

def _energy_cell(e: dict | None) -> str:
    if not e:
        return "—"
    return f"{e['snn_mj']:.3g}" if "snn_mj" in e else f"{e['ann_mj']:.3g}"


def report_markdown(name: str, m: dict, calibration: dict | None = None) -> str:
    """The human-readable report of one evaluation (for the terminal and the README card)."""
    lines = [f"Measured with `{m.get('command', 'sdm.evaluate')}`: {m['fid_n']} samples, {m['sampler'].upper()}, {m['steps']} steps, "
             f"seed {m['seed']}, threshold scale {m['threshold_scale']}. FID (lower is better) in the features of "
             f"the {m['fid_features']}, against the {m['fid_reference']}"
             + (": comparable between checkpoints evaluated this way, not with Inception FIDs in papers."
                if m["fid_features"].startswith("own classifier") else ".")]
    if calibration:
        lines[0] += (f" For scale: {calibration['n']} real train images score FID "
                     f"{calibration['train_vs_test']:.2f}, uniform noise {calibration['noise_vs_test']:.0f}.")
    lines += ["", "| metric | value |", "|---|---|", f"| FID | {m['fid']:.2f} |",
              f"| class coverage (classes with ≥ {m['coverage_min_share']:.0%} of samples) | {m['coverage']:.0%} |",
              f"| mean confidence | {m['mean_confidence']:.3f} |"]
    e = m.get("energy")
    if e and "snn_mj" in e:
        lines += [f"| energy per image (SNN) | {e['snn_mj']:.4g} mJ, {e['sops_per_image']:.3g} SOPs |",
                  f"| energy per image (ANN counterpart, MAC count) | {e['ann_mj']:.4g} mJ (ratio {e['ratio']:.3f}) |",
                  f"| mean firing rate | {e['mean_firing_rate']:.3f} |"]
    elif e:
        lines += [f"| energy per image (ANN) | {e['ann_mj']:.4g} mJ, {e['macs_per_image']:.3g} MACs |"]
    hist = m.get("class_histogram", {})
    if hist:
        lines += [f"| samples per class | {', '.join(f'{k}: {v}' for k, v in hist.items())} |"]
    if m.get("threshold_sweep"):
        lines += ["", f"Threshold-guidance sweep ({m['sweep_n']} samples per scale, the same seeds for every "
                      "scale; FID at this n is not comparable with the FID above):", "",
                  "| scale | FID | coverage | confidence |", "|---|---|---|---|"]
        for r in m["threshold_sweep"]:
            bold = "**" if r["scale"] == m["best_scale"] else ""
            lines.append(f"| {bold}{r['scale']:g}{bold} | {bold}{r['fid']:.2f}{bold} | {r['coverage']:.0%} | "
                         f"{r['mean_confidence']:.3f} |")
        lines += ["", f"Best scale: {m['best_scale']:g} (FID {m['best_fid']:.2f})."]
        if m.get("sweep_command"):
            lines += ["", f"The sweep was measured on its own: `{m['sweep_command']}` ({m['sweep_machine']}, "
                          f"{m['sweep_evaluated_at']})."]
    a = m.get("ann_compare")
    if a:
        ea = a.get("energy")
        lines += ["", f"SNN against its ANN counterpart `{a['checkpoint']}` on the same seeds:", "",
                  f"| | {name} | {a['checkpoint']} |", "|---|---|---|",
                  f"| FID | {m['fid']:.2f} | {a['fid']:.2f} |",
                  f"| coverage | {m['coverage']:.0%} | {a['coverage']:.0%} |",
                  f"| mean confidence | {m['mean_confidence']:.3f} | {a['mean_confidence']:.3f} |",
                  f"| energy per image (mJ) | {_energy_cell(e)} | {_energy_cell(ea)} |", "",
                  f"Same predicted class on the same seed: {a['class_agreement']:.0%}; mean squared pixel "
                  f"difference: {a['paired_mse']:.4f}."]
    return "\n".join(lines)


def comparison_table(rows: list[tuple[str, dict | None, object]]) -> str:
    """One markdown table of several checkpoints: rows of (name, metrics or None, pipeline or None)."""
    lines = ["| checkpoint | route | neuron | T | TSM | FID | coverage | confidence | energy mJ/image | best scale |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m, pipe in rows:
        if m is None:
            lines.append(f"| {name} | not found | | | | | | | | |")
            continue
        c = pipe.config
        conv = pipe.card.get("conversion")
        route = (f"{c.bits}-bit quantised ANN" if c.neuron == "qann" else "ANN" if not c.spiking else
                 f"converted from {conv.get('bits')}-bit QANN" + (" + fine-tune" if conv.get("finetune") else "")
                 if conv else "direct training")
        lines.append(f"| {name} | {route} | {c.neuron} | {c.time_steps} | {'yes' if c.tsm else 'no'} | {m['fid']:.2f} | "
                     f"{m['coverage']:.0%} | {m['mean_confidence']:.3f} | {_energy_cell(m.get('energy'))} | "
                     f"{m.get('best_scale', '—')} |")
    first = next((m for _, m, _ in rows if m), None)
    if first:
        lines += ["", f"{first['fid_n']} samples, {first['sampler'].upper()}, {first['steps']} steps, seed "
                      f"{first['seed']}; FID in the features of the {first['fid_features']}."]
    return "\n".join(lines)


def _with_sweep(stored: dict, run: dict) -> dict:
    """A card's metrics (``stored``) with the threshold sweep of a ``--sweep-only`` ``run`` put in (its own command,
    date and machine under ``sweep_*``); the stored main metrics stay. Raises SystemExit when the card has no main
    metrics to keep (run a full evaluation first)."""
    if "fid" not in stored:
        raise SystemExit("--sweep-only keeps the card's main metrics, but this card has none: evaluate it first")
    out = {k: v for k, v in stored.items() if k not in ("threshold_sweep", "best_scale", "best_fid")}
    out.update({k: run[k] for k in ("threshold_sweep", "sweep_n", "best_scale", "best_fid")})
    out.update(sweep_command=run["command"], sweep_evaluated_at=run["evaluated_at"], sweep_machine=run["machine"])
    return out


def write_evaluation(folder: str | Path, metrics: dict, images: np.ndarray, report: str) -> None:
    """Store metrics in ``folder``'s card.json (re-read first), a samples.png grid and the README.md card."""
    from .export import write_png
    from .imaging import image_grid

    folder = Path(folder)
    k = min(GRID_SIDE * GRID_SIDE, len(images))
    write_png(image_grid(images[:k], nrow=min(GRID_SIDE, k), scale=2), folder / "samples.png")
    card = read_card(folder)
    card.pop("metrics_stale", None)
    card["metrics"] = metrics
    card["samples_grid"] = "samples.png"
    card["evaluation"] = report
    write_card(folder, card)


def calibration_text(cal: dict, reference_images: int) -> str:
    """The calibration as a markdown section of the classifier's card."""
    n = cal["n"]
    return "\n".join([
        f"FID against the whole test split ({reference_images} images) in this feature space:", "",
        "| images | FID |", "|---|---|",
        f"| {n} real train images | {cal['train_vs_test']:.2f} |",
        f"| {n // 2} real train images | {cal['train_half_vs_test']:.2f} |",
        f"| {n} uniform-noise images | {cal['noise_vs_test']:.1f} |", "",
        f"A generator that scores near the first number at n = {n} (the second at n = {n // 2}, the default of the "
        "threshold sweep) is as good as this feature space can tell."])


# ====================================================================== CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdm.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="evaluate one checkpoint (a name under checkpoints/ or a folder)")
    what.add_argument("--checkpoints", nargs="+", metavar="NAME",
                      help="evaluate several and print one table (missing names are listed as not found)")
    what.add_argument("--train-classifier", metavar="DATA", help="train and ship the feature classifier of DATA")
    p.add_argument("--data", help="data set of the checkpoint (default: the one its card names)")
    p.add_argument("--data-dir", help="where the data set lies, if not in its default place")
    p.add_argument("--n", type=int, default=1000, help="samples for FID, coverage and confidence")
    p.add_argument("--steps", type=int, default=50, help="inference steps")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold-scale", type=float, default=1.0, help="threshold guidance of the main run")
    p.add_argument("--time-steps", type=int, default=None, metavar="T",
                   help="spiking time steps T of every denoiser call (default: the trained T; spiking checkpoints)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sweep", action="store_true", help="threshold-guidance sweep (spiking checkpoints only)")
    p.add_argument("--sweep-only", action="store_true",
                   help="only the threshold-guidance sweep: its scale-1.0 point is the main run at --sweep-n "
                        "samples, and the card keeps its main metrics (FID at --n, energy) beside the new sweep")
    p.add_argument("--sweep-n", type=int, default=500, help="samples per sweep scale")
    p.add_argument("--sweep-scales", help=f"comma-separated scales (default {','.join(map(str, SWEEP_SCALES))})")
    p.add_argument("--compare", help="ANN counterpart sampled on the same seeds (default: the card's "
                                     "ann_counterpart, else <data>-ann if it exists; 'none' to skip)")
    p.add_argument("--no-energy", action="store_true", help="skip the energy estimate")
    p.add_argument("--from-cards", action="store_true",
                   help="with --checkpoints: take the metrics a card already holds (same --n, --steps, --sampler, "
                        "--seed) instead of sampling again; evaluate only the others")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="compute Inception FID with this pytorch-fid weights file (needs pip install pytorch-fid)")
    p.add_argument("--classifiers-dir", help="where the feature classifiers live (default checkpoints/classifiers)")
    p.add_argument("--checkpoints-dir", help="where named checkpoints live (default checkpoints/)")
    p.add_argument("--no-write", action="store_true", help="do not write card.json, README.md and samples.png")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of markdown")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    # classifier training
    p.add_argument("--classifier-steps", type=int, default=2000, help="optimizer steps of --train-classifier")
    p.add_argument("--classifier-out", help="folder to write the classifier to (default classifiers-dir/DATA)")
    return p


def _run_train_classifier(args, command: str) -> int:
    data = canonical_data_name(args.train_classifier)
    train = load_dataset(data, "train", args.data_dir)
    test = load_dataset(data, "test", args.data_dir)
    t0 = time.time()
    model, info = train_classifier(train, test, steps=args.classifier_steps, seed=args.seed,
                                   progress=not args.no_progress)
    wall = time.time() - t0
    root = Path(args.classifiers_dir) if args.classifiers_dir else classifiers_dir()
    out = Path(args.classifier_out) if args.classifier_out else root / data
    model.card = {"metrics": {"test_accuracy": info["test_accuracy"]}}
    evaluator = Evaluator(model, test.images, f"{data} test split")
    cal = calibrate(evaluator, train)
    card = {
        "name": f"{data} feature classifier",
        "description": (f"A small CNN trained on the {data} train split. Its {model.cfg.feature_dim}-d penultimate "
                        "features are the feature space of sdm.evaluate's FID (no Inception weights can be "
                        "downloaded here); its predictions give class coverage and confidence. Not a diffusion "
                        "checkpoint."),
        "model": {"dataset": data, "architecture": f"conv {list(model.cfg.widths)} + BN + ReLU + max-pool, "
                  f"avg-pool {model.cfg.pool}x{model.cfg.pool}, fc {model.cfg.feature_dim}, head "
                  f"{model.cfg.num_classes}", "parameters": sum(p.numel() for p in model.parameters()),
                  "input": "[B, C, H, W] in [-1, 1]", "train_images": len(train), "test_images": len(test)},
        "training": {"command": command, "steps": args.classifier_steps, "batch_size": info["batch_size"],
                     "lr": info["lr"], "optimizer": "AdamW, cosine schedule",
                     "augmentation": f"random shifts of up to {info['max_shift']} pixel(s)",
                     "wall_time_s": round(wall, 1),
                     "machine": machine_description(),
                     "final_loss": round(float(np.mean(info["losses"][-50:])), 4)},
        "metrics": {"test_accuracy": round(info["test_accuracy"], 4),
                    "fid_calibration": cal},
        "calibration": calibration_text(cal, len(test)),
    }
    save_classifier(out, model, card)
    result = {"classifier": str(out), "test_accuracy": info["test_accuracy"], "wall_time_s": round(wall, 1),
              "calibration": cal}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{data} classifier: test accuracy {info['test_accuracy']:.2%} after {args.classifier_steps} steps "
              f"({wall:.0f} s); FID calibration: real train {cal['train_vs_test']:.2f}, noise "
              f"{cal['noise_vs_test']:.1f}; wrote {out}")
    return 0


def _compare_pipeline(pipe, args, data: str, explicit: str | None):
    """The ANN counterpart to compare with, or None."""
    from .pipeline import load_pipeline

    if explicit and explicit.lower() == "none":
        return None
    if explicit:
        return load_pipeline(explicit, args.checkpoints_dir)
    if not pipe.config.spiking:
        return None
    names = [n for n in ann_counterpart_names(pipe.name, {**pipe.card, "model": {**pipe.card.get("model", {}),
                                                                                "dataset": data}}) if n != pipe.name]
    for name in names:
        try:
            return load_pipeline(name, args.checkpoints_dir)
        except FileNotFoundError:
            pass
    print(f"note: no ANN counterpart {' or '.join(map(repr, names))} found; skipping the SNN/ANN comparison "
          "(pass --compare NAME)", file=sys.stderr)
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    command = "python -m sdm.evaluate " + " ".join(shlex.quote(a) for a in argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.train_classifier:
            return _run_train_classifier(args, command)
        return _run_evaluate(args, command)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run_evaluate(args, command: str) -> int:
    from .pipeline import load_pipeline

    progress = not args.no_progress
    table_mode = args.checkpoints is not None
    names = args.checkpoints if table_mode else [args.checkpoint]
    scales = None
    if args.sweep_only:
        if args.checkpoints is not None:
            raise SystemExit("--sweep-only takes one --checkpoint")
        args.sweep, args.n, args.no_energy, args.compare = True, args.sweep_n, True, "none"
    if args.sweep:
        scales = [float(s) for s in args.sweep_scales.split(",")] if args.sweep_scales else list(SWEEP_SCALES)
    evaluators: dict[str, Evaluator] = {}
    rows, results = [], []
    for name in names:
        try:
            pipe = load_pipeline(name, args.checkpoints_dir)
        except FileNotFoundError as e:
            if not table_mode:
                raise
            print(f"note: {e}", file=sys.stderr)
            rows.append((name, None, None))
            results.append({"checkpoint": name, "found": False})
            continue
        stored = pipe.card.get("metrics") if (args.from_cards and table_mode) else None
        if stored and all(stored.get(k) == v for k, v in
                          (("fid_n", args.n), ("steps", args.steps), ("sampler", args.sampler), ("seed", args.seed))):
            print(f"{pipe.name}: metrics from its card (evaluated {stored.get('evaluated_at', '?')})", file=sys.stderr)
            rows.append((pipe.name, stored, pipe))
            results.append({"checkpoint": pipe.name, "found": True, "metrics": stored, "from_card": True})
            continue
        data = canonical_data_name(args.data) if args.data else dataset_of(pipe)
        if data not in evaluators:
            evaluators[data] = make_evaluator(data, args.classifiers_dir, args.data_dir, args.inception_weights,
                                              progress=progress)
        ev = evaluators[data]
        compare = _compare_pipeline(pipe, args, data, args.compare if not table_mode else (args.compare or "none"))
        print(f"evaluating {pipe.name}: {args.n} samples, {args.sampler} {args.steps} steps"
              + (f", T = {args.time_steps}" if args.time_steps is not None else "")
              + (f", sweep of {len(scales)} scales x {args.sweep_n}" if scales and pipe.config.spiking else "")
              + (f", against {compare.name}" if compare is not None else ""), file=sys.stderr)
        m, images = evaluate_pipeline(
            pipe, ev, n=args.n, seed=args.seed, steps=args.steps, sampler=args.sampler,
            threshold_scale=args.threshold_scale, batch_size=args.batch_size, time_steps=args.time_steps,
            sweep_scales=scales if (scales and (pipe.config.spiking or not table_mode)) else None,
            sweep_n=args.sweep_n, compare=compare, energy=not args.no_energy, progress=progress)
        m["evaluated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        m["command"] = command
        m["machine"] = machine_description()
        if args.sweep_only:
            m = _with_sweep(pipe.card.get("metrics") or {}, m)
        report = report_markdown(pipe.name, m, ev.classifier.card.get("metrics", {}).get("fid_calibration")
                                 if ev.space is ev.classifier else None)
        if not args.no_write:
            write_evaluation(pipe.path, m, images, report)
            print(f"wrote metrics into {pipe.path / 'card.json'}, README.md and samples.png", file=sys.stderr)
        rows.append((pipe.name, m, pipe))
        results.append({"checkpoint": pipe.name, "found": True, "metrics": m, "report": report})
    if args.json:
        print(json.dumps(results if table_mode else results[0]["metrics"], indent=2, default=float))
    elif table_mode:
        print(comparison_table(rows))
    else:
        print(results[0]["report"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
