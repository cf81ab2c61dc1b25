"""ANN-to-SNN conversion (SDM Section 6, after Fast-SNN).

The quantised ANN (``ModelConfig(neuron="qann", bits=b)``) uses clip-ReLU activations quantised to
``L = 2^b - 1`` levels with a learnable clip alpha per layer. Each becomes an IF neuron with threshold alpha,
initial membrane alpha/2 and reset by subtraction, run for ``T = L`` steps: for a constant input x, the spike
count over T is ``round(clamp(x / alpha, 0, 1) * L)``, the quantised activation times T / alpha. The spike
amplitude alpha is folded into the weights of the conv each neuron drives, so spikes stay binary (and SOPs count).
Deeper layers see inputs that vary over T; their error is the residual membrane potential left after T steps.

    python -m sdm.convert --checkpoint fmnist-qann-b2 --out checkpoints/fmnist-ann2snn-t3
"""
from __future__ import annotations

import argparse
import sys

import torch

from .checkpoints import load_checkpoint, resolve_checkpoint, save_checkpoint
from .neurons import QuantClipReLU
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
    snn_cfg = cfg.replace(neuron="if", T=2 ** cfg.bits - 1, reset="subtract", tsm=False, readout="mean",
                          thresholds=tuple(alphas.values()), v_init=0.5)
    snn = SpikingUNet(snn_cfg)
    snn.load_state_dict({k: v for k, v in qann.state_dict().items() if not k.endswith(".act.alpha")})
    with torch.no_grad():
        for name, m in snn.named_modules():
            if isinstance(m, SpikeConv):
                m.conv.weight.mul_(alphas[f"{name}.act"])  # spike amplitude alpha folded into the synapses
    return snn.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdm.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the quantised ANN (name under checkpoints/ or folder)")
    ap.add_argument("--out", required=True, help="folder of the converted SNN checkpoint")
    args = ap.parse_args(argv)
    try:
        src = resolve_checkpoint(args.checkpoint)
        qann, diffusion, card = load_checkpoint(src)
        snn = convert(qann)
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
                       "command": "python -m sdm.convert " + " ".join(argv if argv is not None else sys.argv[1:])},
    }
    save_checkpoint(args.out, snn, diffusion, new_card)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
