"""A run's train_state/: what ``python -m sdm.train --resume`` continues from, besides the checkpoint itself.

    train_state/model_raw.safetensors   the raw (not EMA) weights
    train_state/optimizer.safetensors   the optimizer's tensors; their metadata is in state.json
    train_state/state.json              step, wall time, optimizer metadata, torch RNG state

It is rewritten with every save and is not meant for git. :class:`ResumeState` says where a run starts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TRAIN_STATE = "train_state"


@dataclass
class ResumeState:
    """Where a run starts, besides its model (``sdm.train.build_model``): a resumed run's step, wall time, EMA and
    optimizer state, and for every run the card's notes on where its weights came from."""

    step: int = 0                  # optimizer steps already behind the weights (a resumed run)
    wall_before: float = 0.0       # their wall time in seconds
    init: str | None = None        # the card's note on where the weights came from
    base: dict | None = None       # the training the --init-from weights had before this run (their card's lineage)
    fresh_from: int | None = None  # the step where a fresh optimizer took over from committed weights
    history: list = field(default_factory=list)  # the earlier runs of a resumed checkpoint (its card's history)
    ema: dict | None = None        # the EMA weights a resumed run continues
    optimizer: dict | None = None  # train_state/'s optimizer metadata, when a resumed run has it


def resume_state(folder: Path, model, card: dict, device: torch.device) -> ResumeState:
    """Where the run in ``folder`` resumes. ``model`` holds the checkpoint's (EMA) weights, which become the EMA to
    continue; it gets train_state/'s raw weights when the folder has them. Without train_state/ (committed weights
    only), the run restarts its optimizer from the EMA weights at the step its card names."""
    start = ResumeState()
    start.ema = {k: v.clone() for k, v in model.state_dict().items()}
    st = folder / TRAIN_STATE
    tr = card.get("training", {})
    if (st / "state.json").exists():
        meta = json.loads((st / "state.json").read_text())
        model.load_state_dict(load_file(str(st / "model_raw.safetensors"), device=str(device)))
        start.step, start.wall_before, start.optimizer = meta["step"], meta["wall_time_s"], meta["optimizer"]
    else:
        start.step, start.wall_before = int(tr.get("steps", 0)), float(tr.get("wall_time_s", 0.0))
        start.init = "resumed from committed EMA weights with a fresh optimizer"
        start.fresh_from = start.step
    start.history = tr.get("history", [])
    start.base = tr.get("init_from")
    return start


def _flat_optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state = {}
    for pid, rest in meta["state"].items():
        st = dict(rest)
        for key, v in tensors.items():
            p, k = key.split(".", 1)
            if p == pid:
                st[k] = v
        state[int(pid)] = st
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def load_optimizer_state(opt: torch.optim.Optimizer, folder: Path, meta: dict) -> None:
    """Restore ``opt`` from ``folder``'s train_state/ (``meta``: the optimizer metadata of its state.json)."""
    _load_optimizer_state(opt, load_file(str(folder / TRAIN_STATE / "optimizer.safetensors")), meta)


def save_train_state(folder: Path, model, opt: torch.optim.Optimizer, step: int, wall: float) -> None:
    """Write ``folder``/train_state/: ``model``'s raw weights, ``opt``'s state, the step, the wall time ``wall``
    (seconds, all runs) and torch's RNG state."""
    st = folder / TRAIN_STATE
    st.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(st / "model_raw.safetensors"))
    tensors, meta = _flat_optimizer_state(opt)
    save_file({k: v.cpu() for k, v in tensors.items()}, str(st / "optimizer.safetensors"))
    (st / "state.json").write_text(json.dumps({"step": step, "wall_time_s": wall, "optimizer": meta,
                                               "rng": torch.get_rng_state().tolist()}))
