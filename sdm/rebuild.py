"""A trained model's weights in a model of other options: another neuron kind, T, bit width or dynamics.

    model, note = rebuild_model(ann, neuron="lif")                   # the ANN's weights as a spiking model's start
    model, note = rebuild_model(ann, neuron="qann", bits=2)          # a quantised ANN ...
    clips = calibrate_clips(ann, model, images, percentile=95.0)     # ... with its clips set from the ANN's inputs

What ``python -m sdm.train --init-from`` runs before it trains (the note goes into the card).
"""
from __future__ import annotations

import torch

from .scheduling_ddpm import DDPMScheduler
from .unet import SpikingUNet

# model options that set the shapes of the weights: fixed once a model is trained
STRUCTURE = ("base_channels", "channel_mult", "num_res_blocks", "time_embed_dim")
# model options that only change how the same weights run: --init-from may change them (then fine-tunes)
DYNAMICS = ("beta", "threshold", "reset", "sigma_data")


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
