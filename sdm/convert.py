"""ANN-to-SNN conversion (SDM Section 6, after Fast-SNN).

The quantised ANN (``ModelConfig(neuron="qann", bits=b)``) uses clip-ReLU activations quantised to
``L = 2^b - 1`` levels with a learnable clip alpha per layer. Each becomes an IF neuron with threshold alpha,
initial membrane alpha/2 and reset by subtraction, run for ``T = L`` steps: for a constant input x, the spike
count over T is ``round(clamp(x / alpha, 0, 1) * L)``, the quantised activation times T / alpha. The spike
amplitude alpha is folded into the weights of the conv each neuron drives, so spikes stay binary (and SOPs count).
Deeper layers see inputs that vary over T; their error is the residual membrane potential left after T steps.

    python -m sdm.convert --checkpoint fmnist-qann-b2 --out checkpoints/fmnist-ann2snn-t3
    python -m sdm.convert --checkpoint fmnist-qann-b2 --out checkpoints/fmnist-ann2snn-t3-ft --finetune 300

``--finetune N`` adds the optional layer-wise fine-tune: N Adam steps on the SNN's weights that bring each
layer's spike rate x alpha towards the quantised ANN's activation on the same noisy images (MSE per layer, plus
the MSE between the two noise predictions), with surrogate gradients through the IF neurons.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from .checkpoints import card_dataset, load_checkpoint, resolve_checkpoint, save_checkpoint
from .neurons import QuantClipReLU, SpikingNeuron
from .unet import SpikeConv, SpikingUNet


def convert(qann: SpikingUNet) -> SpikingUNet:
    """Args:
        qann: a model with ``cfg.neuron == "qann"``.
    Returns:
        the IF-neuron SNN with ``T = 2^bits - 1`` (eval mode), its per-layer thresholds in ``cfg.thresholds``.
    """
    cfg = qann.cfg
    if cfg.neuron != "qann":
        raise ValueError(f"convert() needs a quantised ANN (neuron='qann'), got neuron={cfg.neuron!r}; "
                         "train one with python -m sdm.train --neuron qann --bits 2")
    alphas = {name: float(m.alpha.detach().abs()) + 1e-6 for name, m in qann.activations() if isinstance(m, QuantClipReLU)}
    snn_cfg = cfg.replace(neuron="if", T=2 ** cfg.bits - 1, reset="subtract", tsm=False,
                          thresholds=tuple(alphas.values()), v_init=0.5)
    snn = SpikingUNet(snn_cfg, qann.diffusion)
    snn.load_state_dict({k: v for k, v in qann.state_dict().items() if not k.endswith(".act.alpha")})
    with torch.no_grad():
        for name, m in snn.named_modules():
            if isinstance(m, SpikeConv):
                m.conv.weight.mul_(alphas[f"{name}.act"])  # spike amplitude alpha folded into the synapses
    return snn.eval()


class _Rates:
    """Monitor: each spiking layer's rate x threshold over T (differentiable), the SNN's stand-in for an activation."""

    def __init__(self):
        self.out: dict[str, torch.Tensor] = {}

    def on_spikes(self, layer, spikes, v, threshold):
        self.out[layer.name] = spikes.mean(0) * threshold

    def on_synapses(self, *a):
        pass


def layerwise_loss(snn: SpikingUNet, qann: SpikingUNet, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean over layers of MSE(rate x alpha, quantised activation), plus the MSE of the two noise predictions."""
    acts: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, o))
             for n, m in qann.activations()]
    try:
        with torch.no_grad():
            eps_q = qann(x, t)
    finally:
        for h in hooks:
            h.remove()
    rates = _Rates()
    eps_s = snn(x, t, monitor=rates)
    per_layer = {n: F.mse_loss(rates.out[n], acts[n].reshape(rates.out[n].shape)) for n in acts}
    out = F.mse_loss(eps_s, eps_q)
    layers = torch.stack(list(per_layer.values())).mean()
    return layers + out, {"layers": float(layers.detach()), "output": float(out.detach())}


def finetune(snn: SpikingUNet, qann: SpikingUNet, data, diffusion, steps: int, batch_size: int = 32,
             lr: float = 1e-4, seed: int = 0, progress: bool = True) -> dict:
    """The optional layer-wise fine-tune of a converted SNN (in place). Returns the losses before and after."""
    from .scheduling_ddpm import DDPMScheduler

    sched = DDPMScheduler(diffusion)
    gen = torch.Generator().manual_seed(seed)
    qann.eval()
    snn.train()
    for m in snn.modules():  # BatchNorm keeps the converted statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    params = [p for n, p in snn.named_parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    batches = data.infinite_batches(batch_size, seed=seed)

    def make_batch():
        b = next(batches)
        x0 = b[0] if isinstance(b, (tuple, list)) else b
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, diffusion.num_train_timesteps, (x0.shape[0],), generator=gen)
        return sched.add_noise(x0, noise, t), t

    held = [make_batch() for _ in range(4)]  # fixed batches to measure before and after

    def held_loss():
        with torch.no_grad():
            parts = [layerwise_loss(snn, qann, x, t)[1] for x, t in held]
        return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}

    before = held_loss()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="layer-wise fine-tune", unit="step")
    t0 = time.time()
    for _ in range(steps):
        x, t = make_batch()
        loss, parts = layerwise_loss(snn, qann, x, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(layers=f"{parts['layers']:.4f}", out=f"{parts['output']:.4f}")
    if bar is not None:
        bar.close()
    snn.eval()
    after = held_loss()
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "wall_time_s": round(time.time() - t0, 1),
            "held_out_loss_before": {k: round(v, 6) for k, v in before.items()},
            "held_out_loss_after": {k: round(v, 6) for k, v in after.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdm.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the quantised ANN (name under checkpoints/ or folder)")
    ap.add_argument("--out", required=True, help="folder of the converted SNN checkpoint")
    ap.add_argument("--finetune", type=int, default=0, metavar="STEPS",
                    help="layer-wise fine-tune steps after the conversion (default 0: none)")
    ap.add_argument("--data", help="data set of the fine-tune (default: the one the source card names)")
    ap.add_argument("--data-dir", help="where the data set lies, if not in its default place")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.finetune < 0:
        print(f"error: --finetune must be >= 0 steps, got {args.finetune}", file=sys.stderr)
        return 2
    ft = None
    try:
        src = resolve_checkpoint(args.checkpoint)
        qann, diffusion, card = load_checkpoint(src)
        snn = convert(qann)
        if args.finetune:
            from .data import load_dataset
            data_name = args.data or card_dataset(card)
            if not data_name:
                raise ValueError(f"the card of {src.name} names no data set: pass --data")
            data = load_dataset(data_name, "train", args.data_dir)
            ft = finetune(snn, qann, data, diffusion, args.finetune, args.batch_size, args.lr, args.seed,
                          progress=not args.no_progress)
            ft["data"] = data_name
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    new_card = {
        "name": args.out.rstrip("/").split("/")[-1],
        "description": f"ANN-to-SNN conversion of {src.name} (IF neurons, threshold = clip alpha, "
                       f"initial membrane alpha/2, reset by subtraction, T = 2^{qann.cfg.bits} - 1 = {snn.cfg.T}).",
        "model": {**card.get("model", {}), "neuron": "if", "T": snn.cfg.T, "tsm": False},
        "training": card.get("training", {}),
        "conversion": {"source": src.name, "bits": qann.cfg.bits, "T": snn.cfg.T,
                       "thresholds": dict(zip(snn.layer_names(), snn.cfg.thresholds)),
                       "command": "python -m sdm.convert " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "finetune": ft},
    }
    save_checkpoint(args.out, snn, diffusion, new_card)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
