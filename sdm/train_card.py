"""The model card (card.json) that ``python -m sdm.train`` writes with every save: how the weights were trained.

The card names the command, the steps and wall time of this run and of every run before it (``history``), the
machine, the final loss, and the training behind ``--init-from`` weights (``init_from``, chained by :func:`lineage`).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .config import ModelConfig
from .train_state import ResumeState


def machine_description(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world}x {torch.cuda.get_device_name(device)}"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {world} process(es)"


def lineage(card: dict) -> dict:
    """What a checkpoint's card says of the training behind its weights, kept in the card of a run started from it
    (``--init-from``) under ``training.init_from``: chained, so a TSM stage's card still names the base run."""
    tr = card.get("training") or {}
    keys = ("command", "steps", "wall_time_s", "total_steps", "total_wall_time_s", "init", "init_from", "history")
    return {"name": card.get("name"), **{k: tr[k] for k in keys if k in tr}}


def make_card(args, cfg: ModelConfig, n_params: int, start: ResumeState, *, command: str, machine: str, world: int,
              step: int, run_wall_s: float, loss_ema: float | None, final: bool, old: dict) -> dict:
    """The model card (card.json) of a save at ``step``, ``run_wall_s`` seconds into this run.

    Args:
        old: the card the checkpoint folder holds now ({} if none); a resumed run keeps its metrics, marked stale.
        final: the run's last save (the card says "complete" if it also reached --steps).
    """
    wall = start.wall_before + run_wall_s
    run = {"command": command, "from_step": start.step, "to_step": step, "wall_time_s": round(run_wall_s, 1),
           "machine": machine}
    card = {
        "name": args.name or Path(args.out).name,
        "model": {"dataset": args.data, "architecture": "spiking UNet (SDDPM pre-spike res blocks)" if cfg.spiking
                  else "ANN UNet (same convolutions, SiLU)", "parameters": n_params, "neuron": cfg.neuron,
                  "T": cfg.time_steps, "tsm": cfg.tsm, "image_size": cfg.image_size,
                  "precondition": cfg.precondition},
        "training": {"command": command, "steps": step, "batch_size": args.batch_size * world,
                     "wall_time_s": round(wall, 1), "machine": machine,
                     "bf16": args.bf16, "lr": args.lr, "tsm_lr": args.tsm_lr, "ema_decay": args.ema_decay,
                     "final_loss_ema": round(loss_ema, 5) if loss_ema is not None else None,
                     "init": start.init, "history": start.history + [run], "complete": final and step >= args.steps},
    }
    base = start.base
    if base:  # the whole budget behind these weights, not only this run's
        card["training"].update(init_from=base, total_steps=int(base.get("total_steps", base.get("steps", 0))) + step,
                                total_wall_time_s=round(float(base.get("total_wall_time_s",
                                                                       base.get("wall_time_s", 0.0))) + wall, 1))
    if old.get("metrics") and args.resume:  # evaluated earlier: keep it, marked as stale
        card["metrics_stale"] = {**old["metrics"], "note": f"measured at step {old.get('training', {}).get('steps')}"}
    elif old.get("metrics_stale") and args.resume:  # the saves after the first keep it too
        card["metrics_stale"] = old["metrics_stale"]
    return card
