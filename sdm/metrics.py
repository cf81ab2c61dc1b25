"""What sdm.evaluate measures: FID without downloads, class coverage, confidence, and energy of a pipeline's samples.

    clf = load_classifier("fmnist")                          # checkpoints/classifiers/fmnist/
    ev = make_evaluator("fmnist")                            # that classifier + the fmnist test split as reference
    metrics, images = evaluate_pipeline(pipe, ev, n=1000)    # what sdm.evaluate stores in card["metrics"]

FID: Inception weights cannot be downloaded here, so every data set gets its own small classifier (a CNN trained on
the train split; weights and test accuracy in checkpoints/classifiers/<data>/). FID is the Frechet distance between
Gaussian fits of its penultimate features of the n generated samples and of the whole test split. These numbers are
comparable with each other, not with Inception FIDs in papers; the classifier's card holds a calibration (real
train images against the test split, and uniform noise). :class:`InceptionFeatures` computes Inception FID instead
from a local pytorch-fid weights file (the architecture comes from the optional ``pytorch-fid`` package).

The same classifier's predictions on the samples give class coverage (the share of classes that receive at least 2%
of the samples) and the mean confidence (mean max-softmax).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .checkpoints import card_dataset, checkpoints_dir, read_card, save_safetensors, write_card
from .data import ImageDataset, available_datasets, canonical_data_name, load_dataset

CLASSIFIER_WEIGHTS = "classifier.safetensors"   # not model.safetensors: a classifier folder is no diffusion checkpoint
CLASSIFIER_CONFIG = "classifier.json"
MIN_SHARE = 0.02            # a class is "covered" when it receives at least this share of the samples
ENERGY_IMAGES = 8           # images whose trajectories are metered for the energy estimate


def train_command(data: str) -> str:
    """The command that trains the feature classifier of ``data`` (named in errors)."""
    return f"python -m sdm.evaluate --train-classifier {data}"


def classifiers_dir() -> Path:
    """``checkpoints/classifiers/`` (under $SDM_CHECKPOINTS when set)."""
    return checkpoints_dir() / "classifiers"


# ====================================================================== the feature classifier

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


# ====================================================================== Frechet distance

def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64, unbiased) of features ``[N, D]``, N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs features [N >= 2, D], got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition (negative round-off clipped)."""
    a = (np.asarray(a, dtype=np.float64) + np.asarray(a, dtype=np.float64).T) / 2
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance of two Gaussians: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)``.

    ``Tr((S1 S2)^1/2)`` is computed as ``Tr((R S2 R)^1/2)`` with ``R = S1^1/2``: ``S1 S2`` is similar to the
    symmetric PSD ``R S2 R``, so their square roots have the same trace; no scipy needed.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r = sqrtm_psd(s1)
    m = r @ s2 @ r
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


# ====================================================================== coverage

def class_coverage(predictions: Sequence[int], num_classes: int, min_share: float = MIN_SHARE) -> dict:
    """Which classes the samples fall into.

    Args:
        predictions: predicted class per sample ``[n]``.
        num_classes: classes of the data set.
        min_share: a class is covered when at least this share of the samples is predicted as it.
    Returns:
        {"coverage": covered classes / num_classes, "covered": number covered, "histogram": counts per class [K]}
    """
    p = np.asarray(predictions, dtype=np.int64).ravel()
    if p.size == 0:
        raise ValueError("class_coverage: no predictions")
    if p.min() < 0 or p.max() >= num_classes:
        raise ValueError(f"class_coverage: predictions must lie in 0..{num_classes - 1}")
    hist = np.bincount(p, minlength=num_classes)
    covered = int((hist >= min_share * p.size).sum())
    return {"coverage": covered / num_classes, "covered": covered, "histogram": hist.tolist()}


# ====================================================================== feature spaces and the evaluator

class InceptionFeatures:
    """pytorch-fid's Inception-v3 (2048-d pool3 features) from a local weights file: nothing is downloaded.

    Args:
        weights: ``pt_inception-2015-12-05-6726825d.pth`` (read with ``torch.load(weights_only=True)``) or the
            same state dict as .safetensors.
    """

    def __init__(self, weights: str | Path):
        try:
            from pytorch_fid import inception as pfi
        except ImportError as e:
            raise ImportError(f"--inception-weights needs the optional package pytorch-fid for the Inception-v3 "
                              f"architecture (it brings torchvision): pip install pytorch-fid  ({e})") from None
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file {path} not found (pytorch-fid's "
                                    "pt_inception-2015-12-05-6726825d.pth)")
        sd = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                     weights_only=True)
        # pytorch-fid fetches its weights with load_state_dict_from_url; hand it the local file instead.
        fetch = pfi.load_state_dict_from_url
        pfi.load_state_dict_from_url = lambda *a, **k: sd
        try:
            self.model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
        finally:
            pfi.load_state_dict_from_url = fetch
        self.path = path
        self.batch_size = 50

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 2048]`` from images ``[B, C, H, W]`` in [-1, 1] (gray is repeated to RGB; resized to 299)."""
        x = (x + 1) / 2
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.model(x)[0].flatten(1)

    def describe(self) -> str:
        return f"Inception-v3 pool3 (pytorch-fid weights {self.path.name})"


@torch.no_grad()
def extract(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 500,
            progress: str | None = None) -> np.ndarray:
    """Apply ``fn`` batch-wise to images ``[N, C, H, W]``; returns float64 numpy ``[N, ...]``."""
    out = []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=progress, unit="batch", leave=False, file=sys.stderr)
    for s in starts:
        out.append(fn(images[s:s + batch_size]).double().cpu().numpy())
    return np.concatenate(out)


class Evaluator:
    """Scores generated images of one data set against its reference images.

    Args:
        classifier: the data set's feature classifier (coverage, confidence, and the FID features by default).
        reference: reference images ``[N, C, H, W]`` in [-1, 1] (the test split).
        reference_name: e.g. "fmnist test split".
        feature_space: an object with ``features(x) -> [B, D]`` and ``describe()``; default the classifier.
        min_share: coverage threshold (see :func:`class_coverage`).
    """

    def __init__(self, classifier: FeatureClassifier, reference: torch.Tensor, reference_name: str = "reference",
                 feature_space=None, min_share: float = MIN_SHARE, progress: bool = False):
        self.classifier = classifier.eval()
        self.space = feature_space if feature_space is not None else classifier
        self.min_share = min_share
        self.reference_name = f"{reference_name} ({len(reference)} images)"
        self.batch_size = getattr(self.space, "batch_size", 500)
        feats = extract(self.space.features, reference, self.batch_size,
                        progress="reference features" if progress else None)
        self.ref_mu, self.ref_sigma = gaussian_fit(feats)

    @property
    def class_names(self) -> list[str]:
        c = self.classifier.cfg
        return list(c.class_names) or [str(i) for i in range(c.num_classes)]

    def check_shape(self, channels: int, size: int, what: str) -> None:
        c = self.classifier.cfg
        if (channels, size) != (c.image_channels, c.image_size):
            raise ValueError(f"{what} makes {channels}x{size}x{size} images but the {c.dataset} classifier expects "
                             f"{c.image_channels}x{c.image_size}x{c.image_size}; pass the right --data")

    def fid(self, features: np.ndarray) -> float:
        mu, sigma = gaussian_fit(features)
        return frechet_distance(mu, sigma, self.ref_mu, self.ref_sigma)

    @torch.no_grad()
    def score(self, images: np.ndarray | torch.Tensor) -> dict:
        """Score images ``[n, C, H, W]`` in [0, 1] (as ``pipe.sample`` returns them), n >= 2.

        Returns:
            {"fid", "n", "coverage", "covered", "histogram", "mean_confidence", "predictions" [n]}
        """
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32) * 2 - 1
        self.check_shape(x.shape[1], x.shape[2], "the generator")
        if self.space is self.classifier:
            feats = extract(self.classifier.features, x)
            logits = self.classifier.head(torch.from_numpy(feats).float())
        else:
            feats = extract(self.space.features, x, self.batch_size)
            logits = torch.from_numpy(extract(self.classifier, x))
        probs = logits.softmax(1)
        conf, pred = probs.max(1)
        cov = class_coverage(pred.numpy(), self.classifier.cfg.num_classes, self.min_share)
        return {"fid": self.fid(feats), "n": int(x.shape[0]), **cov, "mean_confidence": float(conf.mean()),
                "predictions": pred.numpy()}


def dataset_of(pipe) -> str:
    """The data set a checkpoint was trained on, from its card (``model.dataset``)."""
    data = card_dataset(pipe.card)
    if not data or canonical_data_name(data) not in available_datasets():
        raise ValueError(f"checkpoint {pipe.name!r}: its card names no labelled data set (got {data!r}); "
                         f"pass --data (one of {', '.join(available_datasets())})")
    return canonical_data_name(data)


def make_evaluator(data: str, classifiers_root: str | Path | None = None, data_dir: str | None = None,
                   inception_weights: str | Path | None = None, progress: bool = False) -> Evaluator:
    """The evaluator of a named data set: its shipped classifier, and its test split as the reference."""
    clf = load_classifier(data, classifiers_root)
    space = InceptionFeatures(inception_weights) if inception_weights else None
    test = load_dataset(data, "test", data_dir)
    return Evaluator(clf, test.images, f"{canonical_data_name(data)} test split", space, progress=progress)


# ====================================================================== evaluating a pipeline

def _sig(x: float, digits: int = 5) -> float:
    """Round to significant digits, for readable cards."""
    return float(f"{x:.{digits}g}")


def _energy(pipe, seed: int, steps: int, sampler: str, threshold_scale: float, images: int) -> dict:
    """Energy per generated image (paper Eqs. 19-20), metered over the trajectories of the first ``images`` seeds."""
    rep = pipe.energy(seed=seed, threshold_scale=threshold_scale, num_inference_steps=steps, sampler=sampler,
                      batch_size=images)
    if pipe.config.spiking:
        return {"sops_per_image": _sig(rep.total_sops), "snn_mj": _sig(rep.energy_mj),
                "ann_mj": _sig(rep.ann_energy_mj), "ratio": _sig(rep.ratio, 4),
                "mean_firing_rate": _sig(rep.mean_firing_rate, 4), "images_measured": images}
    return {"macs_per_image": _sig(rep.snn_macs), "ann_mj": _sig(rep.energy_mj), "images_measured": images}


def evaluate_pipeline(pipe, evaluator: Evaluator, n: int = 1000, seed: int = 0, steps: int = 50,
                      sampler: str = "ddim", threshold_scale: float = 1.0, batch_size: int = 64,
                      sweep_scales: Sequence[float] | None = None, sweep_n: int = 500, compare=None,
                      energy: bool = True, energy_images: int = ENERGY_IMAGES,
                      progress: bool = False) -> tuple[dict, np.ndarray]:
    """Generate ``n`` images and measure them.

    Args:
        pipe: a SpikingDiffusionPipeline.
        evaluator: the :class:`Evaluator` of its data set.
        n: samples for FID, coverage and confidence (>= 2).
        seed, steps, sampler, threshold_scale, batch_size: passed to ``pipe.sample``.
        sweep_scales: threshold-guidance scales to sweep (spiking checkpoints only), ``sweep_n`` samples each, all
            from the same seed so that every scale starts from the same noise.
        compare: the ANN counterpart's pipeline, sampled on the same seeds; or None.
        energy: meter ``energy_images`` trajectories for the energy per image.
    Returns:
        (metrics dict as stored in card["metrics"], the images ``[n, C, H, W]`` in [0, 1])
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 for a Gaussian fit, got {n}")
    c = pipe.config
    evaluator.check_shape(c.image_channels, c.image_size, f"checkpoint {pipe.name!r}")
    if sweep_scales and not c.spiking:
        raise ValueError(f"checkpoint {pipe.name!r} is an ANN: threshold guidance needs a spiking checkpoint")
    if sweep_scales and sweep_n < 2:
        raise ValueError(f"sweep_n must be >= 2, got {sweep_n}")
    t0 = time.time()
    kw = dict(seed=seed, num_inference_steps=steps, sampler=sampler, batch_size=batch_size, progress=progress)
    images = pipe.sample(n=n, threshold_scale=threshold_scale, **kw)
    s = evaluator.score(images)
    m = {"fid": round(s["fid"], 4), "fid_n": n, "fid_features": evaluator.space.describe(),
         "fid_reference": evaluator.reference_name, "coverage": s["coverage"],
         "coverage_min_share": evaluator.min_share,
         "class_histogram": dict(zip(evaluator.class_names, s["histogram"])),
         "mean_confidence": round(s["mean_confidence"], 4), "sampler": sampler, "steps": steps, "seed": seed,
         "threshold_scale": threshold_scale}
    if sweep_scales:
        rows = []
        scales = sorted(set(float(x) for x in sweep_scales))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(scales), desc="threshold sweep", unit="scale", file=sys.stderr)
        for scale in scales:
            # image i depends only on (seed, i): the main run's first sweep_n images are this scale's images
            imgs = images[:sweep_n] if scale == threshold_scale and sweep_n <= n else \
                pipe.sample(n=sweep_n, threshold_scale=scale, **kw)
            r = evaluator.score(imgs)
            rows.append({"scale": scale, "fid": round(r["fid"], 4), "coverage": r["coverage"],
                         "mean_confidence": round(r["mean_confidence"], 4)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(scale=scale, fid=f"{r['fid']:.2f}")
        if bar is not None:
            bar.close()
        best = min(rows, key=lambda r: r["fid"])
        m.update(threshold_sweep=rows, sweep_n=sweep_n, best_scale=best["scale"], best_fid=best["fid"])
    if energy:
        m["energy"] = _energy(pipe, seed, steps, sampler, threshold_scale, min(energy_images, n))
    if compare is not None:
        cc = compare.config
        evaluator.check_shape(cc.image_channels, cc.image_size, f"checkpoint {compare.name!r}")
        other = compare.sample(n=n, threshold_scale=1.0, **kw)
        o = evaluator.score(other)
        m["ann_compare"] = {
            "checkpoint": compare.name, "fid": round(o["fid"], 4), "coverage": o["coverage"],
            "mean_confidence": round(o["mean_confidence"], 4),
            "class_agreement": _sig(float((o["predictions"] == s["predictions"]).mean()), 4),
            "paired_mse": _sig(float(((other - images) ** 2).mean()), 4),
        }
        if energy:
            m["ann_compare"]["energy"] = _energy(compare, seed, steps, sampler, 1.0, min(energy_images, n))
    m["eval_wall_time_s"] = round(time.time() - t0, 1)
    return m, images


# ====================================================================== calibration

def calibrate(evaluator: Evaluator, train: ImageDataset, n: int = 1000, seed: int = 0) -> dict:
    """What FIDs mean in a feature space: ``n`` real train images and ``n`` uniform-noise images against the
    evaluator's reference (the test split)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[:n]
    real = (train.images[idx] + 1) / 2
    noise = torch.rand(real.shape, generator=g)
    return {"n": len(idx), "train_vs_test": round(evaluator.score(real)["fid"], 4),
            "train_half_vs_test": round(evaluator.score(real[:len(idx) // 2])["fid"], 4),
            "noise_vs_test": round(evaluator.score(noise)["fid"], 4)}
