"""What sdm.evaluate measures of a set of images: FID without downloads, class coverage and confidence.

    ev = make_evaluator("fmnist")      # the fmnist classifier (sdm.classifier) + the fmnist test split as reference
    s = ev.score(images)               # images [n, C, H, W] in [0, 1] -> {"fid", "coverage", "mean_confidence", ...}

FID: Inception weights cannot be downloaded here, so every data set gets its own small classifier (a CNN trained on
the train split; weights and test accuracy in checkpoints/classifiers/<data>/). FID is the Frechet distance between
Gaussian fits of its penultimate features of the n generated samples and of the whole test split. These numbers are
comparable with each other, not with Inception FIDs in papers; the classifier's card holds a calibration (real
train images against the test split, and uniform noise). :class:`InceptionFeatures` computes Inception FID instead
from a local pytorch-fid weights file (the architecture comes from the optional ``pytorch-fid`` package).

The same classifier's predictions on the samples give class coverage (the share of classes that receive at least 2%
of the samples) and the mean confidence (mean max-softmax). Sampling a pipeline and measuring its images is
:func:`sdm.measure.evaluate_pipeline`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from .classifier import FeatureClassifier, load_classifier
from .data import ImageDataset, canonical_data_name, load_dataset

MIN_SHARE = 0.02            # a class is "covered" when it receives at least this share of the samples


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


def make_evaluator(data: str, classifiers_root: str | Path | None = None, data_dir: str | None = None,
                   inception_weights: str | Path | None = None, progress: bool = False) -> Evaluator:
    """The evaluator of a named data set: its shipped classifier, and its test split as the reference."""
    clf = load_classifier(data, classifiers_root)
    space = InceptionFeatures(inception_weights) if inception_weights else None
    test = load_dataset(data, "test", data_dir)
    return Evaluator(clf, test.images, f"{canonical_data_name(data)} test split", space, progress=progress)


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
