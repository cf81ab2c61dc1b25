"""Checkpoint folders: ``model.safetensors`` + ``config.json`` + ``card.json`` (+ a README.md model card).

No pickle anywhere: weights are safetensors, configs and cards are JSON.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import DiffusionConfig, ModelConfig, load_config, save_config

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "card.json"
REQUIRED = (WEIGHTS, CONFIG, CARD)
MAX_FILE_BYTES = 10 * 1024 * 1024


def checkpoints_dir() -> Path:
    """The folder of shipped checkpoints: $SDM_CHECKPOINTS, else ``checkpoints/`` beside the package."""
    env = os.environ.get("SDM_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "checkpoints"


def list_checkpoints(root: str | Path | None = None) -> list[str]:
    """Names of the model folders under ``root`` (default: ``checkpoints_dir()``), sorted.

    A folder with a weights file or a config counts (a card alone does not: classifiers have one), so that an incomplete one is listed and its loading error
    (which names the missing file) reaches the user instead of the folder silently disappearing."""
    root = Path(root) if root is not None else checkpoints_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / WEIGHTS).exists() or (p / CONFIG).exists()))


def resolve_checkpoint(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """A checkpoint name under ``root`` or a folder path -> the folder. Unknown names list the available ones."""
    p = Path(name_or_path)
    if p.is_dir() and (p / CONFIG).exists():
        return p
    root = Path(root) if root is not None else checkpoints_dir()
    if (root / str(name_or_path)).is_dir():
        return root / str(name_or_path)
    available = list_checkpoints(root)
    raise FileNotFoundError(
        f"checkpoint {str(name_or_path)!r} not found in {root}; available: "
        f"{', '.join(available) if available else '(none: train one with python -m sdm.train)'}")


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], max_bytes: int | None = MAX_FILE_BYTES) -> Path:
    """Write ``tensors`` to ``path`` atomically (a temporary file renamed over it, so a reader never sees half a file).

    Args:
        path: the .safetensors file to write; its folder must exist.
        tensors: name -> tensor (moved to the CPU, made contiguous).
        max_bytes: refuse (after writing) a file larger than this: shipped files stay under 10 MB. None: no limit.
    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{path} is {size / 1e6:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit for shipped files; "
                         "use fewer channels")
    return path


def card_dataset(card: dict) -> str | None:
    """The data set a model card names (``model.dataset``, else the older top-level ``dataset`` or
    ``training.data``), or None."""
    model = card.get("model") if isinstance(card.get("model"), dict) else {}
    training = card.get("training") if isinstance(card.get("training"), dict) else {}
    return model.get("dataset") or card.get("dataset") or training.get("data") or None


def ann_counterpart_names(name: str, card: dict) -> list[str]:
    """The ANN checkpoints a spiking checkpoint is compared with, in order of preference (use the first that exists):
    the card's ``ann_counterpart`` (top level or under ``model``) alone if it names one, else '<name's first
    part>-ann' and '<data set>-ann' ('fmnist-sdm-t4' trained on fmnist -> ['fmnist-ann'])."""
    model = card.get("model") if isinstance(card.get("model"), dict) else {}
    named = card.get("ann_counterpart") or model.get("ann_counterpart")
    if named:
        return [str(named)]
    data = card_dataset(card)
    found = [f"{name.split('-', 1)[0]}-ann"] + ([f"{str(data).lower()}-ann"] if data else [])
    return list(dict.fromkeys(found))


def save_checkpoint(folder: str | Path, model: torch.nn.Module, diffusion: DiffusionConfig, card: dict,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder.

    Args:
        folder: the target folder (created).
        model: a SpikingUNet; its ``cfg`` goes into config.json.
        diffusion: the forward process it was trained with.
        card: the model card (JSON-serialisable); also rendered to README.md.
        state_dict: weights to save instead of ``model.state_dict()`` (e.g. EMA weights).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / WEIGHTS, state_dict if state_dict is not None else model.state_dict())
    save_config(folder / CONFIG, model.cfg, diffusion)
    write_card(folder, card)
    return folder


def write_card(folder: str | Path, card: dict) -> None:
    folder = Path(folder)
    (folder / CARD).write_text(json.dumps(card, indent=2, default=float) + "\n")
    (folder / "README.md").write_text(render_card(card))


def read_card(folder: str | Path) -> dict:
    """The model card (card.json) of a checkpoint folder, a JSON object."""
    path = Path(folder) / CARD
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: model card is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path}: a model card must be a JSON object ({{...}}), not a {type(card).__name__}; "
                         "restore the file (git checkout) or rewrite it")
    return card


def weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a safetensors file, read from its header only (no tensor data is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupted or truncated safetensors file ({e}); "
                         "restore it (git checkout) or retrain") from None


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu", max_parameters: int | None = None):
    """Load a checkpoint folder.

    Everything is checked before the model is built: the config, the card, and the tensor names and shapes in the
    weights file's header against the model the config describes (built on the meta device, which takes no memory),
    so a broken or hostile folder costs no more than reading its header.

    Args:
        max_parameters: refuse a model with more parameters than this (None: no limit).
    Returns:
        (model in eval mode, DiffusionConfig, card dict)
    Raises:
        FileNotFoundError naming a missing file; ValueError naming a corrupted one and the problem.
    """
    from .unet import SpikingUNet

    folder = Path(folder)
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {folder} is incomplete: missing {', '.join(missing)} "
                                f"(a checkpoint folder holds {', '.join(REQUIRED)})")
    model_cfg, diffusion, _ = load_config(folder / CONFIG)
    card = read_card(folder)
    path = folder / WEIGHTS
    shapes = weight_shapes(path)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SpikingUNet(model_cfg, diffusion).state_dict().items()}
    n_params = sum(math.prod(s) for s in expected.values())
    if max_parameters is not None and n_params > max_parameters:
        raise ValueError(f"{folder / CONFIG} describes a model of {n_params / 1e6:.1f}M values, over this server's "
                         f"limit of {max_parameters / 1e6:.0f}M")
    missing_keys = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing_keys or unexpected:
        raise ValueError(f"{path}: weights do not match {folder / CONFIG}: missing {missing_keys[:5]}"
                         f"{'...' if len(missing_keys) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    bad = [k for k in expected if expected[k] != shapes[k]]
    if bad:
        raise ValueError(f"{path}: tensor shapes do not match the config for {bad[:5]}")
    try:
        sd = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupted or truncated safetensors file ({e}); "
                         "restore it (git checkout) or retrain") from None
    nonfinite = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise ValueError(f"{path}: non-finite values in {nonfinite[:5]}; the file is corrupted")
    model = SpikingUNet(model_cfg, diffusion).to(device)
    model.load_state_dict(sd)
    model.eval()
    return model, diffusion, card


def render_card(card: dict) -> str:
    """A human-readable model card (README.md) from card.json."""
    lines = [f"# {card.get('name', 'SDM checkpoint')}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    for section in ("model", "training", "metrics"):
        data = card.get(section)
        if not data:
            continue
        lines += [f"## {section.capitalize()}", ""]
        for k, v in data.items():
            if isinstance(v, (dict, list)):
                v = "`" + json.dumps(v, default=float) + "`"
            lines.append(f"- **{k}**: {v}")
        lines.append("")
    for k, v in card.items():
        if k in ("name", "description", "model", "training", "metrics"):
            continue
        if isinstance(v, str) and v.endswith(".png"):
            lines += [f"![{k}]({v})", ""]
        elif isinstance(v, str) and "\n" in v:
            lines += [f"## {k.replace('_', ' ').capitalize()}", "", v, ""]
        else:
            lines += [f"- **{k}**: {json.dumps(v, default=float)}"]
    return "\n".join(lines).rstrip() + "\n"
