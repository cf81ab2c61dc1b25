"""Train a spiking (or ANN) denoiser with the DDPM loss.

    python -m sdm.train --data fmnist --out checkpoints/fmnist-sdm-t4-vanilla --steps 20000 --bf16
    python -m sdm.train --init-from checkpoints/fmnist-sdm-t4-vanilla --tsm --out checkpoints/fmnist-sdm-t4 --steps 2000
    torchrun --nproc_per_node 4 -m sdm.train --data fmnist --out runs/big --base-channels 64   # DDP, CUDA if present

The output folder is a checkpoint (EMA weights + config + card) rewritten every --save-every steps, plus
``train_state/`` (raw weights, optimizer, step; not meant for git) from which ``--resume`` continues. Resuming a
folder without train_state/ (e.g. committed weights only) restarts the optimizer from those weights.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .checkpoints import card_dataset, load_checkpoint, resolve_checkpoint, save_checkpoint, read_card
from .config import DiffusionConfig, ModelConfig
from .data import canonical_data_name, load_dataset
from .scheduling_ddpm import DDPMScheduler
from .unet import SpikingUNet, count_parameters


@contextmanager
def stop_requests():
    """Catch Ctrl-C (SIGINT) and SIGTERM while training: the first one asks the loop to finish its step and save.

    Yields a dict whose ``"signal"`` is None until a signal arrives. A second signal aborts at once
    (KeyboardInterrupt), without saving, unless ``"saving"`` is set: a save is never cut short. Outside the main
    thread (where Python cannot take signals) it changes nothing.
    """
    state = {"signal": None, "saving": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def on_signal(signum, frame):
        first = state["signal"] is None
        state["signal"] = state["signal"] or signal.Signals(signum).name
        if state["saving"]:  # a checkpoint half written is worse than a second's wait
            print("\nsaving the checkpoint; it stops right after that", file=sys.stderr)
            return
        if not first:
            raise KeyboardInterrupt
        print(f"\n{state['signal']}: finishing this step, then saving (resume with --resume). "
              "Press Ctrl-C again to stop at once without saving.", file=sys.stderr)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdm.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file with any of these options (flags given on the command line win)")
    p.add_argument("--data", default=None,
                   help="fmnist | mnist | digits | a folder of PNG images (default: fmnist; with --resume, the "
                        "data set the checkpoint was trained on)")
    p.add_argument("--data-dir", help="where the data set lies, if not in its default place")
    p.add_argument("--out", required=False, help="checkpoint folder to write (required)")
    p.add_argument("--name", help="checkpoint name for the card (default: the folder name)")
    # model
    fixed = "; with --init-from or --resume, the checkpoint's"
    dyn = "; with --init-from, the source's, and a different value fine-tunes its weights with it"
    d = ModelConfig()
    p.add_argument("--base-channels", type=int, default=None, help=f"default {d.base_channels}{fixed}")
    p.add_argument("--channel-mult", default=None,
                   help=f"comma-separated multipliers per level (default {','.join(map(str, d.channel_mult))}{fixed})")
    p.add_argument("--num-res-blocks", type=int, default=None, help=f"default {d.num_res_blocks}{fixed}")
    p.add_argument("--time-embed-dim", type=int, default=None, help=f"default {d.time_embed_dim}{fixed}")
    p.add_argument("--T", type=int, default=None,
                   help="spiking time steps (default 4; with --init-from, the source's, and a different T re-runs "
                        "its weights at this T, e.g. train at T=2 and fine-tune at T=4)")
    p.add_argument("--neuron", default=None, choices=["lif", "if", "ann", "qann"],
                   help="default lif; with --init-from, the source's, and a different neuron starts that kind of "
                        "model from its weights, e.g. --init-from fmnist-ann --neuron lif")
    p.add_argument("--beta", type=float, default=None, help=f"LIF leak (default {d.beta}{dyn})")
    p.add_argument("--threshold", type=float, default=None, help=f"firing threshold (default {d.threshold}{dyn})")
    p.add_argument("--reset", default=None, choices=["zero", "subtract"],
                   help=f"membrane reset after a spike (default {d.reset}{dyn})")
    p.add_argument("--bits", type=int, default=None,
                   help=f"activation bits of --neuron qann (default {ModelConfig.bits}); with --init-from of a quantised ANN, "
                        "re-quantise it to this many bits (its clips alpha are kept)")
    p.add_argument("--precondition", action="store_true",
                   help="analog skip readout eps = c_skip(t) x_t + c_out(t) F(x_t, t) (also with --init-from)")
    p.add_argument("--sigma-data", type=float, default=None,
                   help=f"data root mean square for --precondition (default {d.sigma_data}{dyn})")
    p.add_argument("--tsm", action="store_true", help="enable TSM (with --init-from: the paper's TSM stage)")
    p.add_argument("--tsm-lr", type=float, default=None,
                   help="peak learning rate of the TSM weights (default: --lr); the schedule scales it like --lr")
    p.add_argument("--init-from", help="start from this checkpoint's weights (name or folder)")
    p.add_argument("--clip-percentile", type=float, default=95.0,
                   help="with --init-from an ANN and --neuron qann: set each layer's clip alpha to this percentile "
                        "of the positive inputs the ANN's layer receives on noisy training images (0: keep alpha "
                        "at its default 6.0)")
    # optimisation
    p.add_argument("--steps", type=int, default=10000, help="total optimizer steps (a resumed run continues to it)")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=1e-4, help="cosine decay floor")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--hflip", action="store_true",
                   help="random horizontal flips (not for Fashion-MNIST or MNIST, whose items have one orientation)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from --out's train_state/ (or its weights)")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (and save) after this wall time; 0 = no limit")
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop (and save) at this step while keeping the --steps learning-rate schedule "
                        "(to match another run's budget); 0 = run to --steps")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The options of ``argv`` (default: sys.argv). A ``--config`` file's options become the parser's defaults, so
    a flag on the command line wins however it is spelled (``--min 0.01`` for ``--min-lr``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f"--config {args.config}: {e}")
        if not isinstance(data, dict):
            parser.error(f"--config {args.config}: expected an object of options, e.g. {{\"lr\": 0.001}}")
        defaults = {}
        for k, v in data.items():
            k = k.replace("-", "_")
            if k not in vars(args) or k == "config":
                parser.error(f"--config {args.config}: unknown option {k!r}")
            defaults[k] = ",".join(map(str, v)) if isinstance(v, list) else v
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out is required: the checkpoint folder to write, e.g. --out checkpoints/my-model")
    return args


# model options that set the shapes of the weights: fixed once a model is trained
STRUCTURE = ("base_channels", "channel_mult", "num_res_blocks", "time_embed_dim")
# model options that only change how the same weights run: --init-from may change them (then fine-tunes)
DYNAMICS = ("beta", "threshold", "reset", "sigma_data")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _shown(value) -> str:
    """A model option as it is written on the command line."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _model_option(args, key: str):
    """The value of model option ``key`` given on the command line (or in --config), parsed; None if not given."""
    v = getattr(args, key)
    if v is None or key != "channel_mult":
        return v
    try:
        return tuple(int(m) for m in str(v).split(","))
    except ValueError:
        raise SystemExit(f"--channel-mult must be comma-separated integers, got {v!r}") from None


def model_options_against(args, cfg: ModelConfig, source: Path, resume: bool) -> dict:
    """Check the model options given against those of a checkpoint (``cfg``, from ``source``).

    A resumed run must keep every one; a run started ``--init-from`` it must keep the structure (the weights'
    shapes). Returns the dynamics options that differ (for ``rebuild_model``)."""
    changes = {}
    for key in STRUCTURE + DYNAMICS:
        asked, have = _model_option(args, key), getattr(cfg, key)
        if asked is None or asked == have:
            continue
        flag = _flag(key)
        if resume:
            way = (f"train a new model with a new --out" if key in STRUCTURE
                   else f"use --init-from {source} {flag} {_shown(asked)} with a new --out")
            raise SystemExit(f"--resume {source}: the checkpoint has {flag} {_shown(have)}, not {_shown(asked)}. Drop "
                             f"{flag} to continue it, or {way}.")
        if key in STRUCTURE:
            raise SystemExit(f"{flag} {_shown(asked)}: the weights of {source} are for {flag} {_shown(have)}, and "
                             f"--init-from cannot change the shapes of weights. Drop {flag}, or train a new model "
                             f"without --init-from.")
        if key == "threshold" and cfg.thresholds:
            raise SystemExit(f"--threshold {asked}: {source} is a converted SNN with a threshold per layer; drop "
                             f"--threshold (threshold guidance scales them all at inference).")
        changes[key] = asked
    return changes


def model_config_from_args(args, data) -> ModelConfig:
    d = ModelConfig()
    given = {k: _model_option(args, k) for k in STRUCTURE + DYNAMICS}
    try:
        return ModelConfig(image_channels=data.images.shape[1], image_size=data.images.shape[2],
                           **{k: getattr(d, k) if v is None else v for k, v in given.items()},
                           T=args.T or d.T, neuron=args.neuron or d.neuron, tsm=args.tsm,
                           bits=d.bits if args.bits is None else args.bits, precondition=args.precondition)
    except ValueError as e:
        raise SystemExit(f"model options: {e}") from None


def machine_description(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world}x {torch.cuda.get_device_name(device)}"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {world} process(es)"


def lr_at(step: int, args, fresh_from: int | None = None) -> float:
    """Linear warmup, then cosine decay to --min-lr at --steps. ``fresh_from``: the step at which a fresh
    optimizer took over (a resume from committed weights); the warmup is then repeated from there."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    lr = args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))
    if fresh_from is not None and step - fresh_from < args.warmup:
        lr *= (step - fresh_from + 1) / args.warmup
    return lr


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


def save_train_state(folder: Path, model, ema: dict, opt, step: int, wall: float, args) -> None:
    st = folder / "train_state"
    st.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(st / "model_raw.safetensors"))
    tensors, meta = _flat_optimizer_state(opt)
    save_file({k: v.cpu() for k, v in tensors.items()}, str(st / "optimizer.safetensors"))
    (st / "state.json").write_text(json.dumps({"step": step, "wall_time_s": wall, "optimizer": meta,
                                               "rng": torch.get_rng_state().tolist()}))


class EMA:
    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        shadow, current = [], []
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                shadow.append(self.shadow[k])
                current.append(v.detach().float())
            else:
                self.shadow[k].copy_(v)
        if shadow:  # one fused update over all tensors
            torch._foreach_lerp_(shadow, current, 1 - d)

    def state_dict(self, like: dict) -> dict:
        return {k: self.shadow[k].to(like[k].dtype) for k in like}


def rebuild_model(model: SpikingUNet, neuron: str | None = None, T: int | None = None,
                  bits: int | None = None, precondition: bool = False,
                  dynamics: dict | None = None) -> tuple[SpikingUNet, str]:
    """``model``'s weights in a model of another neuron kind, T or bit width (same architecture otherwise): the ANN
    counterpart's weights as the start of a spiking model, a model trained at T=2 fine-tuned at T=4, or a quantised
    ANN re-quantised to more bits (its clips alpha are kept). ``precondition=True`` switches the analog skip
    readout on (``ModelConfig.precondition``), which adds no weights; ``dynamics`` sets options that change how the
    weights run, not their shapes (``DYNAMICS``: e.g. ``{"reset": "subtract"}``). Every tensor whose name and shape
    match is copied; the rest (a quantised ANN's clips alpha, TSM weights of another T) keep their fresh init. Returns the
    model (``model`` itself when nothing changes) and a note for the card ("" then)."""
    cfg = model.cfg
    changes, what = {}, []
    if neuron is not None and neuron != cfg.neuron:
        changes["neuron"] = neuron
        what.append(f"neuron {cfg.neuron} -> {neuron}")
    if T is not None and T != cfg.T:
        if T < 1:
            raise SystemExit(f"--T must be >= 1, got {T}")
        changes["T"] = T
        what.append(f"T {cfg.T} -> {T}")
    if bits is not None and bits != cfg.bits:
        target = changes.get("neuron", cfg.neuron)
        if target != "qann":
            raise SystemExit(f"--bits {bits} with --init-from: only a quantised ANN (neuron 'qann') can change its "
                             f"bits, this one is {target!r}")
        if bits < 1:
            raise SystemExit(f"--bits must be >= 1, got {bits}")
        changes["bits"] = bits
    if precondition and not cfg.precondition:
        changes["precondition"] = True
        what.append("preconditioning on")
    for key, value in (dynamics or {}).items():
        if key not in DYNAMICS:
            raise ValueError(f"{key!r} is not one of {DYNAMICS}")
        if value != getattr(cfg, key):
            changes[key] = value
            what.append(f"{key} {getattr(cfg, key)} -> {value}")
    if not changes:
        return model, ""
    try:
        new_cfg = cfg.replace(**changes)
    except ValueError as e:
        raise SystemExit(f"model options: {e}") from None
    new = SpikingUNet(new_cfg, model.diffusion).to(next(model.parameters()).device)
    target_sd, source_sd = new.state_dict(), model.state_dict()
    copied = {k: v for k, v in source_sd.items() if k in target_sd and target_sd[k].shape == v.shape}
    new.load_state_dict(copied, strict=False)
    notes = []
    if what:
        fresh = sorted(k for k in target_sd if k not in copied)
        notes.append("rebuilt with " + ", ".join(what) + f" ({len(copied)} of {len(target_sd)} tensors copied"
                     + (f"; fresh: {', '.join(fresh[:4])}{' ...' if len(fresh) > 4 else ''})" if fresh else ")"))
    if "bits" in changes:
        notes.append(f"re-quantised from {cfg.bits} to {bits} bits")
    return new, ", ".join(notes)


@torch.no_grad()
def calibrate_clips(ann: SpikingUNet, qann: SpikingUNet, images: torch.Tensor, percentile: float, seed: int = 0,
                    n: int = 256, sample: int = 1_000_000) -> dict[str, float]:
    """Set each clip alpha of the quantised ANN ``qann`` (rebuilt from the float ANN ``ann``: the same layer names)
    to ``percentile`` (0-100) of the positive inputs ``ann``'s activation of the same name receives, on ``n``
    training images noised at uniform random diffusion steps (at most ``sample`` values per layer, drawn at random).
    Returns {layer: alpha}."""
    if not 0 < percentile <= 100:
        raise SystemExit(f"--clip-percentile must be in (0, 100], got {percentile}")
    device = next(ann.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x0 = images[torch.randint(0, len(images), (n,), generator=g)].to(device)
    t = torch.randint(0, ann.diffusion.num_train_timesteps, (n,), generator=g).to(device)
    xt = DDPMScheduler(ann.diffusion).add_noise(x0, torch.randn(x0.shape, generator=g).to(device), t)
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs):
            v = inputs[0].detach().float().flatten()
            v = v[v > 0]
            if v.numel() > sample:
                v = v[torch.randperm(v.numel(), generator=g)[:sample].to(v.device)]
            seen[name] = torch.cat([seen[name], v]) if name in seen else v
        return hook

    hooks = [m.register_forward_pre_hook(keep(name)) for name, m in ann.activations()]
    was_training = ann.training
    try:
        ann.eval()
        for i in range(0, n, 64):
            ann(xt[i:i + 64], t[i:i + 64])
    finally:
        ann.train(was_training)
        for h in hooks:
            h.remove()
    clips = {}
    for name, module in qann.activations():
        v = seen.get(name)
        if v is None or v.numel() == 0:
            continue
        if v.numel() > sample:
            v = v[torch.randperm(v.numel(), generator=g)[:sample].to(v.device)]
        clips[name] = max(float(torch.quantile(v, percentile / 100.0)), 1e-3)
        module.alpha.data.fill_(clips[name])
    return clips


def lineage(card: dict) -> dict:
    """What a checkpoint's card says of the training behind its weights, kept in the card of a run started from it
    (``--init-from``) under ``training.init_from``: chained, so a TSM stage's card still names the base run."""
    tr = card.get("training") or {}
    keys = ("command", "steps", "wall_time_s", "total_steps", "total_wall_time_s", "init", "init_from", "history")
    return {"name": card.get("name"), **{k: tr[k] for k in keys if k in tr}}


def resolve_data_arg(data: str | None, resume_dir: Path | None) -> str:
    """The data set to train on. A resumed run keeps the data set its card names: ``--data`` may be left out, and
    a different one is refused, since it would silently switch data sets in the middle of a run."""
    trained_on = None
    if resume_dir is not None and (resume_dir / "card.json").exists():
        trained_on = card_dataset(read_card(resume_dir))
    if data is None:
        return trained_on or "fmnist"
    same = canonical_data_name(data) == canonical_data_name(trained_on)
    if trained_on is not None and not same:
        raise SystemExit(f"--resume {resume_dir}: this checkpoint was trained on {trained_on!r}, not on --data "
                         f"{data!r}. Drop --data to continue on {trained_on!r}, or use --init-from {resume_dir} "
                         f"with a new --out to start a transfer to {data!r}.")
    return data


def train_step(model, opt, xt, t, target, autocast, grad_clip: float, params) -> torch.Tensor:
    """One optimizer step of the DDPM loss ||target - eps_theta(x_t, t)||^2, where the target is the noise. Returns
    the (detached) loss, not read back here: on a GPU, reading it every step would wait for the step to finish (the
    loop checks it when it logs)."""
    with autocast:
        pred = model(xt, t)
    loss = F.mse_loss(pred.float(), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return loss.detach()


@dataclass
class Start:
    """Where a run starts, besides its model (``build_model``)."""

    step: int = 0                  # optimizer steps already behind the weights (a resumed run)
    wall_before: float = 0.0       # their wall time in seconds
    init: str | None = None        # the card's note on where the weights came from
    base: dict | None = None       # the training the --init-from weights had before this run (their card's lineage)
    fresh_from: int | None = None  # the step where a fresh optimizer took over from committed weights
    history: list = field(default_factory=list)  # the earlier runs of a resumed checkpoint (its card's history)
    ema: dict | None = None        # the EMA weights a resumed run continues
    optimizer: dict | None = None  # train_state/'s optimizer metadata, when a resumed run has it


def build_model(args, data, device: torch.device) -> tuple[SpikingUNet, DiffusionConfig, Start]:
    """The model to train, in training mode on ``device``: resumed from ``--out`` (``--resume``), started from
    ``--init-from``'s weights (rebuilt with the options given), or fresh from the options.

    Args:
        args: the parsed options (``parse_args``), ``args.data`` resolved.
        data: the training set; its images ``[N, C, H, W]`` must have the model's shape.
    Returns:
        (model, its noise schedule, where the run starts).
    """
    out = Path(args.out)
    start = Start()
    if args.resume and (out / "config.json").exists():
        model, diffusion, card = load_checkpoint(out, device)
        cfg = model.cfg
        model_options_against(args, cfg, out, resume=True)
        for flag, asked, have in (("--neuron", args.neuron, cfg.neuron), ("--T", args.T, cfg.T),
                                  ("--precondition", True if args.precondition else None, cfg.precondition)):
            if asked is not None and asked != have:
                spelled = flag if asked is True else f"{flag} {asked}"
                raise SystemExit(f"--resume {out}: the checkpoint has {flag} {have}, not {asked}. Drop {flag} to "
                                 f"continue it, or use --init-from {out} {spelled} with a new --out.")
        start.ema = {k: v.clone() for k, v in model.state_dict().items()}
        st = out / "train_state"
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
    elif args.init_from:
        src = resolve_checkpoint(args.init_from)
        model, diffusion, src_card = load_checkpoint(src, device)
        start.base = lineage(src_card)
        start.init = f"initialised from {src.name}"
        source = model
        model, rebuilt = rebuild_model(model, neuron=args.neuron, T=args.T, bits=args.bits,
                                       precondition=args.precondition,
                                       dynamics=model_options_against(args, model.cfg, src, resume=False))
        if rebuilt:
            start.init += f", {rebuilt}"
        if model.cfg.neuron == "qann" and source.cfg.neuron == "ann" and args.clip_percentile:
            clips = calibrate_clips(source, model, data.images, args.clip_percentile, seed=args.seed)
            start.init += (f", clips alpha calibrated to the {args.clip_percentile:g}th percentile of the ANN's "
                           f"activation inputs ({min(clips.values()):.2f}-{max(clips.values()):.2f})")
        if args.tsm:
            model.enable_tsm()
            start.init += " then TSM enabled (p = 1)"
    else:
        diffusion = DiffusionConfig()
        model = SpikingUNet(model_config_from_args(args, data), diffusion).to(device)
    cfg = model.cfg
    if cfg.image_channels != data.images.shape[1] or cfg.image_size != data.images.shape[2]:
        raise SystemExit(f"the model expects {cfg.image_channels}x{cfg.image_size}x{cfg.image_size} images, "
                         f"the data set {args.data} has {tuple(data.images.shape[1:])}")
    return model.train(), diffusion, start


def make_optimizer(model: SpikingUNet, args) -> torch.optim.AdamW:
    """AdamW over the model's weights; the TSM weights in a group of their own (--tsm-lr, no weight decay)."""
    tsm_params = [p for n, p in model.named_parameters() if n.endswith(".tsm")]
    other = [p for n, p in model.named_parameters() if not n.endswith(".tsm")]
    groups = [{"params": other, "lr_scale": 1.0}]
    if tsm_params:  # no weight decay on TSM: it would pull the weights towards 0, not towards their init of 1
        groups.append({"params": tsm_params, "weight_decay": 0.0,
                       "lr_scale": (args.tsm_lr / args.lr) if args.tsm_lr else 1.0})
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def make_card(args, cfg: ModelConfig, n_params: int, start: Start, *, command: str, machine: str, world: int,
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


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python -m sdm.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        torch.backends.cudnn.benchmark = True  # the shapes never change within a run
    else:
        device = torch.device("cpu")
    if distributed:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed + rank)

    out = Path(args.out)
    args.data = resolve_data_arg(args.data, out if args.resume else None)
    data = load_dataset(args.data, "train", args.data_dir)
    model, diffusion, start = build_model(args, data, device)
    cfg = model.cfg
    sched = DDPMScheduler(diffusion)
    ema = EMA(model, args.ema_decay)
    if start.ema is not None:
        ema.shadow = {k: v.float().clone() for k, v in start.ema.items()}
    opt = make_optimizer(model, args)
    if start.optimizer is not None:
        _load_optimizer_state(opt, load_file(str(out / "train_state" / "optimizer.safetensors")), start.optimizer)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    step = start.step

    n_params = count_parameters(model)
    log_path = out / "train_log.csv"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        new_log = not log_path.exists() or not args.resume
        log_file = open(log_path, "w" if new_log else "a", newline="")
        log = csv.writer(log_file)
        if new_log:
            log.writerow(["step", "loss", "lr", "images_per_s", "wall_time_s"])
        print(f"{cfg.neuron} UNet, {n_params / 1e6:.3f}M parameters, T={cfg.time_steps}, data {args.data} "
              f"{tuple(data.images.shape)}, {machine_description(device, world)}, from step {step}"
              + (f" ({start.init})" if start.init else ""), file=sys.stderr)

    def save(final: bool):
        if rank != 0:
            return
        run_wall = time.time() - t_start
        card = make_card(args, cfg, n_params, start, command=command, machine=machine_description(device, world),
                         world=world, step=step, run_wall_s=run_wall, loss_ema=loss_ema, final=final,
                         old=read_card(out) if (out / "card.json").exists() else {})
        requests["saving"] = True
        try:
            save_checkpoint(out, model, diffusion, card, state_dict=ema.state_dict(model.state_dict()))
            save_train_state(out, model, ema, opt, step, start.wall_before + run_wall, args)
        finally:
            requests["saving"] = False

    t_start = time.time()
    loss_ema, loss_avg = None, None
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank + step)
    N = len(data.images)
    images = data.images
    bar = None
    if rank == 0 and not args.no_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=args.steps, initial=step, desc="training", unit="step", dynamic_ncols=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    last_t, last_step = time.time(), step
    stop = False
    with stop_requests() as requests:
        while step < args.steps and not stop:
            idx = torch.randint(0, N, (args.batch_size,), generator=gen)
            x0 = images[idx].to(device, non_blocking=True)
            if args.hflip:
                flip = torch.rand(x0.shape[0], generator=gen) < 0.5
                x0 = torch.where(flip[:, None, None, None].to(device), x0.flip(-1), x0)
            t = torch.randint(0, diffusion.num_train_timesteps, (x0.shape[0],), generator=gen).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            xt = sched.add_noise(x0, noise, t)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args, start.fresh_from) * g.get("lr_scale", 1.0)
            loss = train_step(ddp_model, opt, xt, t, noise, autocast, args.grad_clip, model.parameters())
            ema.update(model, step)
            step += 1
            loss_avg = loss if loss_avg is None else 0.98 * loss_avg + 0.02 * loss  # stays on the device
            stop = bool(args.stop_at and step >= args.stop_at)
            if not distributed or step % args.log_every == 0:  # every rank looks at the same steps: they stop together
                wants = bool((args.max_minutes and time.time() - t_start > args.max_minutes * 60) or requests["signal"])
                if distributed:
                    flag = torch.tensor([float(wants)], device=device)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                    wants = bool(flag.item())
                stop = stop or wants
            saving = step % args.save_every == 0 and step < args.steps and not stop
            if step % args.log_every == 0 or step == args.steps or saving or stop:
                loss_ema = loss_avg.item()
                if not math.isfinite(loss_ema):
                    raise SystemExit(f"loss became {loss_ema} by step {step}; lower --lr or check the data")
            if rank == 0:
                if step % args.log_every == 0 or step == args.steps:
                    now = time.time()
                    ips = (step - last_step) * args.batch_size * world / max(now - last_t, 1e-9)
                    last_t, last_step = now, step
                    log.writerow([step, f"{loss_ema:.5f}", f"{opt.param_groups[0]['lr']:.2e}", f"{ips:.1f}",
                                  f"{start.wall_before + now - t_start:.1f}"])
                    log_file.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_ema:.4f}", img_s=f"{ips:.0f}")
                if bar is not None:
                    bar.update(1)
            if saving:
                save(final=False)
        save(final=True)
    if rank == 0:
        if bar is not None:
            bar.close()
        log_file.close()
        print(f"saved {out} at step {step} (loss {loss_ema:.4f}, {time.time() - t_start:.0f} s this run)", file=sys.stderr)
        if step < args.steps:
            print(f"stopped early ({requests['signal'] or 'time or --stop-at'}): continue to step {args.steps} "
                  f"with the same command plus --resume", file=sys.stderr)
    if distributed:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
