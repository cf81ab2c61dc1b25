"""sdm.classifier: the feature classifier learns, round-trips through its folder, and the shipped ones are good.

Synthetic data only (scikit-learn's 8x8 digits, upscaled to 28x28 for the fixture models).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdm
from sdm import classifier
from sdm.data import ImageDataset, load_dataset


# ---------------------------------------------------------------------------------------------- helpers

def digits28(split: str) -> ImageDataset:
    """The 8x8 digits, upscaled to the fixtures' 28x28, still in [-1, 1]."""
    d = load_dataset("digits", split)
    x = F.interpolate(d.images, size=28, mode="bilinear", align_corners=False).clamp(-1, 1)
    return ImageDataset("digits28", x, d.labels, d.num_classes, d.class_names)


@pytest.fixture(scope="module")
def tiny_classifier():
    torch.manual_seed(0)
    model, info = classifier.train_classifier(digits28("train"), digits28("test"), steps=40, batch_size=64,
                                              widths=(8, 16), feature_dim=32)
    return model, info


# ---------------------------------------------------------------------------------------------- the classifier

def test_classifier_learns(tiny_classifier):
    model, info = tiny_classifier
    losses = info["losses"]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    assert info["test_accuracy"] > 0.3                        # 10 classes: chance is 0.1
    x = digits28("test").images[:5]
    assert model.features(x).shape == (5, 32) and model(x).shape == (5, 10)


def test_classifier_save_load_round_trip_gives_identical_features(tiny_classifier, tmp_path):
    model, info = tiny_classifier
    root = tmp_path / "classifiers"
    classifier.save_classifier(root / "digits28", model, {"name": "t", "metrics": {"test_accuracy": info["test_accuracy"]}})
    assert sorted(p.name for p in (root / "digits28").iterdir()) == \
        ["README.md", "card.json", "classifier.json", "classifier.safetensors"]
    back = classifier.load_classifier("digits28", root)
    x = digits28("test").images[:20]
    with torch.no_grad():
        assert torch.equal(model.features(x), back.features(x))
        assert torch.equal(model(x), back(x))
    assert back.cfg == model.cfg and back.test_accuracy == info["test_accuracy"]
    # a classifier folder is no diffusion checkpoint
    assert sdm.list_checkpoints(tmp_path) == [] and sdm.list_checkpoints(root) == []


def test_missing_classifier_names_the_train_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m sdm.evaluate --train-classifier fmnist"):
        classifier.load_classifier("fashion-mnist", tmp_path)


def test_shipped_classifiers_are_good_and_not_checkpoints():
    assert "classifiers" not in sdm.list_checkpoints()
    for data, floor in (("fmnist", 0.90), ("mnist", 0.97)):
        clf = classifier.load_classifier(data)
        assert clf.test_accuracy >= floor
        assert clf.cfg.image_size == 28 and clf.cfg.num_classes == 10
        for f in clf.folder.iterdir():
            assert f.stat().st_size <= 10 * 1024 * 1024
        cal = clf.card["metrics"]["fid_calibration"]
        assert cal["train_vs_test"] * 10 < cal["noise_vs_test"]
