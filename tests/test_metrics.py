"""sdm.metrics: Frechet distance, class coverage, the feature classifier, and evaluating a pipeline.

Synthetic data only (scikit-learn's 8x8 digits, upscaled to 28x28 for the fixture models); under ~30 s.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdm
from sdm import metrics
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
    model, info = metrics.train_classifier(digits28("train"), digits28("test"), steps=40, batch_size=64,
                                           widths=(8, 16), feature_dim=32)
    return model, info


@pytest.fixture
def evaluator(tiny_classifier):
    model, info = tiny_classifier
    model.card = {"metrics": {"test_accuracy": info["test_accuracy"]}}
    return metrics.Evaluator(model, digits28("test").images, "digits28 test split")


# ---------------------------------------------------------------------------------------------- Frechet distance

def test_frechet_of_identical_fits_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 6)) @ np.random.default_rng(1).normal(size=(6, 6))
    mu, sigma = metrics.gaussian_fit(f)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8 * np.trace(sigma))


def test_frechet_matches_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    mu1 = rng.normal(size=5)
    previous = -1.0
    for shift in (0.0, 0.5, 1.0, 2.0):
        mu2 = mu1 + shift
        expected = 5 * shift ** 2 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
        got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
        assert got == pytest.approx(expected, rel=1e-9)
        assert got > previous                                 # grows with the mean shift
        previous = got


def test_frechet_for_full_covariances_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")             # scipy is no dependency; this is only a cross-check
    rng = np.random.default_rng(3)
    A, B = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    s1, s2 = A @ A.T + 0.1 * np.eye(8), B @ B.T
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_sqrtm_psd_squares_back_and_handles_singular_matrices():
    v = np.random.default_rng(0).normal(size=(6, 3))
    a = v @ v.T                                               # rank 3
    r = metrics.sqrtm_psd(a)
    np.testing.assert_allclose(r @ r, a, atol=1e-9)
    np.testing.assert_allclose(r, r.T)


def test_gaussian_fit_needs_two_samples():
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.gaussian_fit(np.zeros((1, 4)))


# ---------------------------------------------------------------------------------------------- coverage

def test_class_coverage_on_hand_made_predictions():
    preds = [0] * 50 + [1] * 46 + [2] * 2 + [3] * 2 + [4] * 0       # 100 samples; 2% = 2 samples
    preds = preds[:98] + [5]                                         # 99 samples: no 3 left, one 5
    out = metrics.class_coverage(preds, num_classes=6, min_share=0.02)
    assert out["histogram"] == [50, 46, 2, 0, 0, 1]
    # 2% of 99 is 1.98: classes 0, 1 and 2 are covered, 5 (1 sample) is not
    assert out["covered"] == 3 and out["coverage"] == pytest.approx(0.5)
    assert metrics.class_coverage([1, 1, 1, 1], 2, 0.02)["coverage"] == 0.5
    assert metrics.class_coverage(list(range(10)) * 3, 10)["coverage"] == 1.0
    with pytest.raises(ValueError, match="0..9"):
        metrics.class_coverage([10], 10)


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
    metrics.save_classifier(root / "digits28", model, {"name": "t", "metrics": {"test_accuracy": info["test_accuracy"]}})
    assert sorted(p.name for p in (root / "digits28").iterdir()) == \
        ["README.md", "card.json", "classifier.json", "classifier.safetensors"]
    back = metrics.load_classifier("digits28", root)
    x = digits28("test").images[:20]
    with torch.no_grad():
        assert torch.equal(model.features(x), back.features(x))
        assert torch.equal(model(x), back(x))
    assert back.cfg == model.cfg and back.test_accuracy == info["test_accuracy"]
    # a classifier folder is no diffusion checkpoint
    assert sdm.list_checkpoints(tmp_path) == [] and sdm.list_checkpoints(root) == []


def test_missing_classifier_names_the_train_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m sdm.evaluate --train-classifier fmnist"):
        metrics.load_classifier("fashion-mnist", tmp_path)


def test_shipped_classifiers_are_good_and_not_checkpoints():
    assert "classifiers" not in sdm.list_checkpoints()
    for data, floor in (("fmnist", 0.90), ("mnist", 0.97)):
        clf = metrics.load_classifier(data)
        assert clf.test_accuracy >= floor
        assert clf.cfg.image_size == 28 and clf.cfg.num_classes == 10
        for f in clf.folder.iterdir():
            assert f.stat().st_size <= 10 * 1024 * 1024
        cal = clf.card["metrics"]["fid_calibration"]
        assert cal["train_vs_test"] * 10 < cal["noise_vs_test"]


def test_inception_without_pytorch_fid_says_how_to_install(tmp_path):
    try:
        import pytorch_fid  # noqa: F401
        pytest.skip("pytorch-fid is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install pytorch-fid"):
        metrics.InceptionFeatures(tmp_path / "pt_inception.pth")


# ---------------------------------------------------------------------------------------------- evaluating

def test_real_images_score_better_than_noise(evaluator):
    real = (digits28("train").images[:200] + 1) / 2
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0))
    assert evaluator.score(real)["fid"] < evaluator.score(noise)["fid"]


def test_evaluating_the_fixture(fixtures_dir, evaluator):
    pipe = sdm.load_pipeline("tiny-sdm", fixtures_dir)
    ann = sdm.load_pipeline("tiny-ann", fixtures_dir)
    scales = [0.99, 1.0, 1.01]
    m, images = metrics.evaluate_pipeline(pipe, evaluator, n=16, steps=2, sweep_scales=scales, sweep_n=8,
                                          compare=ann, energy_images=2)
    assert images.shape == (16, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert m["fid_n"] == 16 and np.isfinite(m["fid"]) and m["fid"] >= 0
    assert 0 < m["coverage"] <= 1 and 0.1 <= m["mean_confidence"] <= 1
    assert sum(m["class_histogram"].values()) == 16
    # the sweep: one row per scale, the best is the lowest FID; scale 1.0 reuses the main run's first 8 images,
    # which are exactly the images a fresh run of 8 gives (image i depends only on (seed, i))
    assert [r["scale"] for r in m["threshold_sweep"]] == scales
    best = min(m["threshold_sweep"], key=lambda r: r["fid"])
    assert (m["best_scale"], m["best_fid"]) == (best["scale"], best["fid"])
    fresh = pipe.sample(n=8, seed=0, num_inference_steps=2, threshold_scale=1.0)
    np.testing.assert_array_equal(fresh, images[:8])
    assert m["threshold_sweep"][1]["fid"] == pytest.approx(evaluator.score(fresh)["fid"], abs=1e-4)
    # energy against the ANN, and the ANN sampled on the same seeds
    e = m["energy"]
    assert e["sops_per_image"] > 0 and e["snn_mj"] > 0 and e["ratio"] == pytest.approx(e["snn_mj"] / e["ann_mj"], rel=1e-3)
    a = m["ann_compare"]
    assert a["checkpoint"] == "tiny-ann" and np.isfinite(a["fid"]) and 0 <= a["class_agreement"] <= 1
    assert a["energy"]["ann_mj"] > 0


def test_sweep_and_data_set_errors(fixtures_dir, evaluator):
    ann = sdm.load_pipeline("tiny-ann", fixtures_dir)
    with pytest.raises(ValueError, match="spiking"):
        metrics.evaluate_pipeline(ann, evaluator, n=2, steps=1, sweep_scales=[1.0], energy=False)
    with pytest.raises(ValueError, match="--data"):
        metrics.dataset_of(ann)                                   # the fixture's card names no data set
