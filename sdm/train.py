"""Train a spiking (or ANN) denoiser with the DDPM loss.

    python -m sdm.train --data fmnist --out checkpoints/fmnist-sdm-t4-vanilla --steps 20000 --bf16
    python -m sdm.train --init-from checkpoints/fmnist-sdm-t4-vanilla --tsm --out checkpoints/fmnist-sdm-t4 --steps 2000
    torchrun --nproc_per_node 4 -m sdm.train --data fmnist --out runs/big --base-channels 64   # DDP, CUDA if present

The output folder is a checkpoint (EMA weights + config + card) rewritten every --save-every steps, plus
``train_state/`` (raw weights, optimizer, step; not meant for git) from which ``--resume`` continues. Resuming a
folder without train_state/ (e.g. committed weights only) restarts the optimizer from those weights.
"""
# This module is the command line and the loop (its docstring is --help); --init-from's rebuilding is sdm.rebuild,
# train_state/ and the resume state sdm.train_state, the model card sdm.train_card.
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoints import card_dataset, load_checkpoint, resolve_checkpoint, save_checkpoint, read_card
from .config import DiffusionConfig, ModelConfig
from .data import canonical_data_name, load_dataset
from .rebuild import DYNAMICS, STRUCTURE, calibrate_clips, rebuild_model
from .scheduling_ddpm import DDPMScheduler
from .train_card import lineage, machine_description, make_card
from .train_state import ResumeState, load_optimizer_state, resume_state, save_train_state
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


def build_model(args, data, device: torch.device) -> tuple[SpikingUNet, DiffusionConfig, ResumeState]:
    """The model to train, in training mode on ``device``: resumed from ``--out`` (``--resume``), started from
    ``--init-from``'s weights (rebuilt with the options given), or fresh from the options.

    Args:
        args: the parsed options (``parse_args``), ``args.data`` resolved.
        data: the training set; its images ``[N, C, H, W]`` must have the model's shape.
    Returns:
        (model, its noise schedule, where the run starts).
    """
    out = Path(args.out)
    start = ResumeState()
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
        start = resume_state(out, model, card, device)
    elif args.init_from:
        model, diffusion, start = _init_from(args, data, device)
    else:
        diffusion = DiffusionConfig()
        model = SpikingUNet(model_config_from_args(args, data), diffusion).to(device)
    cfg = model.cfg
    if cfg.image_channels != data.images.shape[1] or cfg.image_size != data.images.shape[2]:
        raise SystemExit(f"the model expects {cfg.image_channels}x{cfg.image_size}x{cfg.image_size} images, "
                         f"the data set {args.data} has {tuple(data.images.shape[1:])}")
    return model.train(), diffusion, start


def _init_from(args, data, device: torch.device) -> tuple[SpikingUNet, DiffusionConfig, ResumeState]:
    """``--init-from``'s weights rebuilt with the options given (``rebuild_model``), a quantised ANN's clips
    calibrated from its float ANN, TSM enabled with ``--tsm``; the start notes where they came from."""
    src = resolve_checkpoint(args.init_from)
    model, diffusion, src_card = load_checkpoint(src, device)
    start = ResumeState()
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
    return model, diffusion, start


def make_optimizer(model: SpikingUNet, args) -> torch.optim.AdamW:
    """AdamW over the model's weights; the TSM weights in a group of their own (--tsm-lr, no weight decay)."""
    tsm_params = [p for n, p in model.named_parameters() if n.endswith(".tsm")]
    other = [p for n, p in model.named_parameters() if not n.endswith(".tsm")]
    groups = [{"params": other, "lr_scale": 1.0}]
    if tsm_params:  # no weight decay on TSM: it would pull the weights towards 0, not towards their init of 1
        groups.append({"params": tsm_params, "weight_decay": 0.0,
                       "lr_scale": (args.tsm_lr / args.lr) if args.tsm_lr else 1.0})
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


# ====================================================================== the run

def init_processes(args) -> tuple[torch.device, int, int, bool]:
    """This process's device (CUDA when present, at its LOCAL_RANK) and, under torchrun, the process group; then
    --threads and the seed of this rank. Returns (device, rank, world size, distributed)."""
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
    return device, rank, world, distributed


@dataclass
class TrainingRun:
    """One training run as the loop sees it: options, processes, model and optimizer, set up by ``main``."""

    args: argparse.Namespace
    command: str
    device: torch.device
    rank: int
    world: int
    distributed: bool
    model: SpikingUNet
    diffusion: DiffusionConfig
    start: ResumeState
    ema: EMA
    opt: torch.optim.Optimizer
    n_params: int
    t_start: float = 0.0  # when the loop began (time.time())

    @property
    def out(self) -> Path:
        return Path(self.args.out)


class _Progress:
    """Rank 0's record of a run: train_log.csv (a row every --log-every steps), the progress bar, images/s."""

    def __init__(self, run: TrainingRun, data):
        args, cfg, out = run.args, run.model.cfg, run.out
        out.mkdir(parents=True, exist_ok=True)
        log_path = out / "train_log.csv"
        new_log = not log_path.exists() or not args.resume
        self.file = open(log_path, "w" if new_log else "a", newline="")
        self.log = csv.writer(self.file)
        if new_log:
            self.log.writerow(["step", "loss", "lr", "images_per_s", "wall_time_s"])
        print(f"{cfg.neuron} UNet, {run.n_params / 1e6:.3f}M parameters, T={cfg.time_steps}, data {args.data} "
              f"{tuple(data.images.shape)}, {machine_description(run.device, run.world)}, from step {run.start.step}"
              + (f" ({run.start.init})" if run.start.init else ""), file=sys.stderr)
        self.run, self.bar = run, None

    def begin(self, step: int) -> None:
        if not self.run.args.no_progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.run.args.steps, initial=step, desc="training", unit="step", dynamic_ncols=True)
        self.last_t, self.last_step = time.time(), step

    def update(self, step: int, loss_ema: float | None) -> None:
        run, args = self.run, self.run.args
        if step % args.log_every == 0 or step == args.steps:
            now = time.time()
            ips = (step - self.last_step) * args.batch_size * run.world / max(now - self.last_t, 1e-9)
            self.last_t, self.last_step = now, step
            self.log.writerow([step, f"{loss_ema:.5f}", f"{run.opt.param_groups[0]['lr']:.2e}", f"{ips:.1f}",
                               f"{run.start.wall_before + now - run.t_start:.1f}"])
            self.file.flush()
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{loss_ema:.4f}", img_s=f"{ips:.0f}")
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()


def _batch(run: TrainingRun, images: torch.Tensor, sched: DDPMScheduler, gen: torch.Generator):
    """A training batch on the run's device: (x_t, t, the noise added), images drawn with ``gen``."""
    args, device = run.args, run.device
    idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
    x0 = images[idx].to(device, non_blocking=True)
    if args.hflip:
        flip = torch.rand(x0.shape[0], generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None].to(device), x0.flip(-1), x0)
    t = torch.randint(0, run.diffusion.num_train_timesteps, (x0.shape[0],), generator=gen).to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    return sched.add_noise(x0, noise, t), t, noise


def _stop_wanted(run: TrainingRun, requests: dict) -> bool:
    """Whether --max-minutes or a signal asks to stop; under DDP, whether any rank does, so that all stop together."""
    args = run.args
    wants = bool((args.max_minutes and time.time() - run.t_start > args.max_minutes * 60) or requests["signal"])
    if run.distributed:
        flag = torch.tensor([float(wants)], device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        wants = bool(flag.item())
    return wants


def _save(run: TrainingRun, step: int, loss_ema: float | None, requests: dict, final: bool) -> None:
    """Rank 0 writes the checkpoint (EMA weights, config, card) and train_state/; a signal never cuts it short."""
    if run.rank != 0:
        return
    out = run.out
    run_wall = time.time() - run.t_start
    card = make_card(run.args, run.model.cfg, run.n_params, run.start, command=run.command,
                     machine=machine_description(run.device, run.world), world=run.world, step=step,
                     run_wall_s=run_wall, loss_ema=loss_ema, final=final,
                     old=read_card(out) if (out / "card.json").exists() else {})
    requests["saving"] = True
    try:
        save_checkpoint(out, run.model, run.diffusion, card, state_dict=run.ema.state_dict(run.model.state_dict()))
        save_train_state(out, run.model, run.opt, step, run.start.wall_before + run_wall)
    finally:
        requests["saving"] = False


def train_loop(run: TrainingRun, ddp_model, images: torch.Tensor,
               progress: _Progress | None) -> tuple[int, float, str | None]:
    """Train from the run's start to --steps (or --stop-at, --max-minutes, a signal), saving every --save-every
    steps and at the end. Returns (the last step, its loss EMA, the signal that stopped the run or None)."""
    args, model, opt = run.args, run.model, run.opt
    sched = DDPMScheduler(run.diffusion)
    step = run.start.step
    run.t_start = time.time()
    loss_ema, loss_avg = None, None
    gen = torch.Generator().manual_seed(args.seed * 1000 + run.rank + step)
    if progress is not None:
        progress.begin(step)
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=args.bf16)
    stop = False
    with stop_requests() as requests:
        while step < args.steps and not stop:
            xt, t, noise = _batch(run, images, sched, gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args, run.start.fresh_from) * g.get("lr_scale", 1.0)
            loss = train_step(ddp_model, opt, xt, t, noise, autocast, args.grad_clip, model.parameters())
            run.ema.update(model, step)
            step += 1
            loss_avg = loss if loss_avg is None else 0.98 * loss_avg + 0.02 * loss  # stays on the device
            stop = bool(args.stop_at and step >= args.stop_at)
            # every rank looks at the same steps: they stop together
            if not run.distributed or step % args.log_every == 0:
                wants = _stop_wanted(run, requests)
                stop = stop or wants
            saving = step % args.save_every == 0 and step < args.steps and not stop
            if step % args.log_every == 0 or step == args.steps or saving or stop:
                loss_ema = loss_avg.item()
                if not math.isfinite(loss_ema):
                    raise SystemExit(f"loss became {loss_ema} by step {step}; lower --lr or check the data")
            if progress is not None:
                progress.update(step, loss_ema)
            if saving:
                _save(run, step, loss_ema, requests, final=False)
        _save(run, step, loss_ema, requests, final=True)
    return step, loss_ema, requests["signal"]


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python -m sdm.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    device, rank, world, distributed = init_processes(args)
    out = Path(args.out)
    args.data = resolve_data_arg(args.data, out if args.resume else None)
    data = load_dataset(args.data, "train", args.data_dir)
    model, diffusion, start = build_model(args, data, device)
    ema = EMA(model, args.ema_decay)
    if start.ema is not None:
        ema.shadow = {k: v.float().clone() for k, v in start.ema.items()}
    opt = make_optimizer(model, args)
    if start.optimizer is not None:
        load_optimizer_state(opt, out, start.optimizer)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    run = TrainingRun(args, command, device, rank, world, distributed, model, diffusion, start, ema, opt,
               n_params=count_parameters(model))
    progress = _Progress(run, data) if rank == 0 else None
    step, loss_ema, stopped_by = train_loop(run, ddp_model, data.images, progress)
    if progress is not None:
        progress.close()
        print(f"saved {out} at step {step} (loss {loss_ema:.4f}, {time.time() - run.t_start:.0f} s this run)",
              file=sys.stderr)
        if step < args.steps:
            print(f"stopped early ({stopped_by or 'time or --stop-at'}): continue to step {args.steps} "
                  f"with the same command plus --resume", file=sys.stderr)
    if distributed:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
