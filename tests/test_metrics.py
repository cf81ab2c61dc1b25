"""sdm.metrics: Frechet distance, class coverage, the feature spaces and the evaluator's scores.

Synthetic data only (test_classifier.py's 8x8 digits upscaled to 28x28, and its tiny classifier).
"""
import numpy as np
import pytest
import torch

from sdm import metrics
from test_classifier import digits28, tiny_classifier  # noqa: F401  (fixture)


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


# ---------------------------------------------------------------------------------------------- feature spaces and the evaluator

def test_inception_without_pytorch_fid_says_how_to_install(tmp_path):
    try:
        import pytorch_fid  # noqa: F401
        pytest.skip("pytorch-fid is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install pytorch-fid"):
        metrics.InceptionFeatures(tmp_path / "pt_inception.pth")


def test_real_images_score_better_than_noise(evaluator):
    real = (digits28("train").images[:200] + 1) / 2
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0))
    assert evaluator.score(real)["fid"] < evaluator.score(noise)["fid"]
