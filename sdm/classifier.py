"""The feature classifier of a data set: a small CNN whose penultimate features are sdm.metrics' FID feature space.

    model, info = train_classifier(train, test, steps=2000)       # what python -m sdm.evaluate --train-classifier runs
    save_classifier(classifiers_dir() / "fmnist", model, card)   # checkpoints/classifiers/fmnist/
    clf = load_classifier("fmnist")

Inception weights cannot be downloaded here, so every data set gets its own classifier, trained on its train split;
its weights, config and card (test accuracy, FID calibration) live in checkpoints/classifiers/<data>/. Its
predictions also give class coverage and confidence (:mod:`sdm.metrics`).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .checkpoints import checkpoints_dir, read_card, save_safetensors, write_card
from .data import ImageDataset, available_datasets, canonical_data_name

CLASSIFIER_WEIGHTS = "classifier.safetensors"   # not model.safetensors: a classifier folder is no diffusion checkpoint
CLASSIFIER_CONFIG = "classifier.json"


def train_command(data: str) -> str:
    """The command that trains the feature classifier of ``data`` (named in errors)."""
    return f"python -m sdm.evaluate --train-classifier {data}"


def classifiers_dir() -> Path:
    """``checkpoints/classifiers/`` (under $SDM_CHECKPOINTS when set)."""
    return checkpoints_dir() / "classifiers"


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of the feature classifier.

    Attributes:
        dataset: the data set it was trained on (canonical name).
        image_channels, image_size: its input, ``[B, C, H, W]`` in [-1, 1].
        num_classes: outputs.
        class_names: one per class.
        widths: channels of the conv blocks (each: conv 3x3 -> BN -> ReLU -> max-pool 2).
        pool: side of the adaptive average pool after the last block.
        feature_dim: width of the penultimate layer, the FID feature space.
    """

    dataset: str
    image_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    class_names: tuple[str, ...] = ()
    widths: tuple[int, ...] = (32, 64)
    pool: int = 7
    feature_dim: int = 128

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"], d["widths"] = list(self.class_names), list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        d = dict(d)
        d["class_names"], d["widths"] = tuple(d.get("class_names", ())), tuple(d.get("widths", (32, 64)))
        return cls(**d)


class FeatureClassifier(nn.Module):
    """A small CNN: (conv 3x3 -> BN -> ReLU -> max-pool 2) per width -> adaptive avg-pool -> Linear -> ReLU
    (the features) -> dropout -> Linear (the logits).

    Inputs are ``[B, C, H, W]`` in model space, [-1, 1]; map samples in [0, 1] with ``2 x - 1`` first.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        layers, cin = [], cfg.image_channels
        for w in cfg.widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            cin = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(cfg.pool), nn.Flatten())
        self.fc = nn.Linear(cin * cfg.pool * cfg.pool, cfg.feature_dim)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)
        self.card: dict = {}
        self.folder: Path | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, feature_dim]`` of images ``[B, C, H, W]`` in [-1, 1]."""
        return F.relu(self.fc(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        return self.head(self.drop(self.features(x)))

    @property
    def test_accuracy(self) -> float | None:
        return self.card.get("metrics", {}).get("test_accuracy")

    def describe(self) -> str:
        acc = self.test_accuracy
        return (f"own classifier {self.cfg.dataset}" + (f" (test acc {acc:.1%})" if acc is not None else "")
                + f", {self.cfg.feature_dim}-d penultimate features")


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with the background (-1)."""
    if max_shift <= 0:
        return x
    B, _, H, W = x.shape
    xp = F.pad(x, (max_shift,) * 4, value=-1.0)
    d = torch.randint(0, 2 * max_shift + 1, (B, 2), generator=gen).tolist()
    return torch.stack([xp[i, :, dy:dy + H, dx:dx + W] for i, (dy, dx) in enumerate(d)])


@torch.no_grad()
def accuracy(model: FeatureClassifier, data: ImageDataset, batch_size: int = 1000) -> float:
    """Share of ``data`` that ``model`` classifies correctly."""
    model.eval()
    correct = 0
    for s in range(0, len(data), batch_size):
        correct += int((model(data.images[s:s + batch_size]).argmax(1) == data.labels[s:s + batch_size]).sum())
    return correct / max(len(data), 1)


def train_classifier(train: ImageDataset, test: ImageDataset | None = None, steps: int = 2000, batch_size: int = 128,
                     lr: float = 3e-3, max_shift: int = 1, seed: int = 0, widths: Sequence[int] = (32, 64),
                     pool: int = 7, feature_dim: int = 128, progress: bool = False) -> tuple[FeatureClassifier, dict]:
    """Train a feature classifier with AdamW, a cosine learning rate and random shifts of up to ``max_shift`` pixels.

    Args:
        train: labelled images ``[N, C, H, W]`` in [-1, 1].
        test: measured at the end when given.
        steps: optimizer steps.
    Returns:
        (model in eval mode, {"losses": [loss per step], "test_accuracy": float or None, "train_accuracy": ...})
    """
    if train.labels is None or train.num_classes < 2:
        raise ValueError(f"data set {train.name!r} has no labels: a feature classifier needs a labelled data set "
                         f"(one of {available_datasets()})")
    torch.manual_seed(seed)
    cfg = ClassifierConfig(dataset=canonical_data_name(train.name), image_channels=train.channels,
                           image_size=train.image_size, num_classes=train.num_classes,
                           class_names=tuple(train.class_names), widths=tuple(widths), pool=pool,
                           feature_dim=feature_dim)
    model = FeatureClassifier(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc=f"training the {cfg.dataset} classifier", unit="step", file=sys.stderr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(train), (batch_size,), generator=gen)
        x = _random_shift(train.images[idx], max_shift, gen)
        loss = F.cross_entropy(model(x), train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if len(losses) % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    info = {"losses": losses, "test_accuracy": accuracy(model, test) if test is not None else None,
            "max_shift": max_shift, "batch_size": batch_size, "lr": lr}
    return model, info


def save_classifier(folder: str | Path, model: FeatureClassifier, card: dict) -> Path:
    """Write ``classifier.safetensors`` + ``classifier.json`` + ``card.json`` + ``README.md`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / CLASSIFIER_WEIGHTS, model.state_dict())
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    write_card(folder, card)
    model.card, model.folder = card, folder
    return folder


def load_classifier(data: str, root: str | Path | None = None) -> FeatureClassifier:
    """Load the feature classifier of data set ``data`` from ``root/<data>/`` (default: ``classifiers_dir()``).

    Raises:
        FileNotFoundError with the command that trains it; ValueError for a corrupt file.
    """
    name = canonical_data_name(data)
    folder = (Path(root) if root is not None else classifiers_dir()) / name
    missing = [f for f in (CLASSIFIER_WEIGHTS, CLASSIFIER_CONFIG) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no feature classifier for data set {name!r} in {folder} (missing {', '.join(missing)}); "
            f"train it (a few CPU minutes) with:\n    {train_command(name)}")
    try:
        cfg = ClassifierConfig.from_dict(json.loads((folder / CLASSIFIER_CONFIG).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise ValueError(f"{folder / CLASSIFIER_CONFIG}: not a classifier config ({e}); "
                         f"retrain with {train_command(name)}") from None
    model = FeatureClassifier(cfg)
    try:
        model.load_state_dict(load_file(str(folder / CLASSIFIER_WEIGHTS)))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{folder / CLASSIFIER_WEIGHTS}: corrupt or mismatched weights ({e}); "
                         f"retrain with {train_command(name)}") from None
    model.card = read_card(folder) if (folder / "card.json").is_file() else {}
    model.folder = folder
    return model.eval()
