"""Configuration dataclasses that round-trip to JSON.

A checkpoint folder stores ``config.json`` = ``{"model": ModelConfig, "diffusion": DiffusionConfig}``;
nothing else is needed to rebuild the model (diffusers' ``register_to_config``, nanoGPT's ``model_args``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Any

NEURONS = ("lif", "if", "ann", "qann")

# ModelConfig options removed because they measured no gain (docs/EXPERIMENTS.md): option -> (the one value the code
# still implements, the last commit that had the option). A config.json that names the value loads as before.
REMOVED = {
    "readout": ("mean", "0e11dba"),
    "readout_from": ("spikes", "0e11dba"),
    "dropout": (0.0, "0e11dba"),
    "skip": ("scalar", "0e11dba"),
}


def _without_removed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` less the removed options that hold their one remaining value; any other value raises a ValueError."""
    for key, value in data.items():
        if key in REMOVED and value != REMOVED[key][0]:
            kept, commit = REMOVED[key]
            raise ValueError(f"option {key}={value!r} was removed because it measured no gain (see "
                             f"docs/EXPERIMENTS.md); only {key}={kept!r} is left. To use this checkpoint, "
                             f"`git checkout {commit}`, the last commit that had {key}")
    return {k: v for k, v in data.items() if k not in REMOVED}


def _from_dict(cls, data: dict[str, Any], what: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; known fields: {sorted(names)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
    return cls(**kwargs)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the spiking UNet (and of its ANN counterpart).

    Attributes:
        image_channels: 1 for gray, 3 for RGB.
        image_size: height = width of the images.
        base_channels: channels after the first convolution.
        channel_mult: channel multiplier per resolution level.
        num_res_blocks: res blocks per level on the way down (the way up has one more).
        time_embed_dim: width of the (float) time embedding MLP.
        T: spiking time steps per denoiser call (ignored by ANN neurons).
        neuron: "lif" | "if" | "ann" (SiLU) | "qann" (quantised clip-ReLU, for conversion).
        tsm: temporal-wise spiking mechanism (paper Eq. 16) on/off.
        beta: LIF leak factor (IF neurons use 1.0).
        threshold: firing threshold before threshold guidance.
        reset: "zero" (hard reset) or "subtract".
        bits: activation bits of the "qann" neuron (T of the converted SNN = 2^bits - 1).
        thresholds: per-layer thresholds in forward order (empty: ``threshold`` everywhere); set by ANN-to-SNN
            conversion, where layer l's threshold is the clip alpha_l of the quantised ANN.
        v_init: initial membrane potential as a fraction of the threshold (0; 0.5 after conversion).
        precondition: read the noise out as ``c_skip(t) * x_t + c_out(t) * F(x_t, t)`` (an analog skip of the input,
            as in EDM's preconditioning) instead of ``F(x_t, t)``. At large t the noise is almost x_t itself, which
            spiking layers pass on only coarsely; the skip carries it in float and F predicts the rest.
        sigma_data: the data's root mean square used by ``precondition`` (Fashion-MNIST in [-1, 1]: 0.83).
    """

    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 24
    channel_mult: tuple[int, ...] = (1, 2, 3)
    num_res_blocks: int = 1
    time_embed_dim: int = 96
    T: int = 4
    neuron: str = "lif"
    tsm: bool = False
    beta: float = 0.9
    threshold: float = 1.0
    reset: str = "zero"
    bits: int = 2
    thresholds: tuple[float, ...] = ()
    v_init: float = 0.0
    precondition: bool = False
    sigma_data: float = 0.8

    def __post_init__(self):
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data}")
        if self.neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {NEURONS}, got {self.neuron!r}")
        if self.reset not in ("zero", "subtract"):
            raise ValueError(f"reset must be 'zero' or 'subtract', got {self.reset!r}")
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        if self.image_size % (2 ** (len(self.channel_mult) - 1)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2^(levels-1) = "
                f"{2 ** (len(self.channel_mult) - 1)}; use fewer channel_mult entries or pad the images")

    @property
    def spiking(self) -> bool:
        return self.neuron in ("lif", "if")

    @property
    def time_steps(self) -> int:
        """Spiking time steps actually run (1 for an ANN)."""
        return self.T if self.spiking else 1

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["thresholds"] = list(self.thresholds)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, _without_removed(data), "ModelConfig")


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process: ``num_train_timesteps`` steps of a linear (or cosine) beta schedule."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    clip_sample: bool = True

    def __post_init__(self):
        if self.beta_schedule not in ("linear", "cosine"):
            raise ValueError(f"beta_schedule must be 'linear' or 'cosine', got {self.beta_schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionConfig":
        return _from_dict(cls, data, "DiffusionConfig")


def save_config(path: str | Path, model: ModelConfig, diffusion: DiffusionConfig, extra: dict | None = None) -> None:
    data = {"model": model.to_dict(), "diffusion": diffusion.to_dict()}
    if extra:
        data.update(extra)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def load_config(path: str | Path) -> tuple[ModelConfig, DiffusionConfig, dict]:
    """Read config.json. Returns (model config, diffusion config, the remaining keys)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore the file from git") from None
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"{path}: expected an object with a 'model' key")
    try:
        model = ModelConfig.from_dict(data.pop("model"))
        diffusion = DiffusionConfig.from_dict(data.pop("diffusion", {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    return model, diffusion, data
