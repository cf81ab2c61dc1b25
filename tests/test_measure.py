"""sdm.measure: sampling a pipeline and measuring its images (a threshold sweep, the ANN counterpart, energy).

test_classifier.py's tiny classifier and test_metrics.py's evaluator stand in for the shipped ones.
"""
import numpy as np
import pytest

import sdm
from sdm import measure
from test_classifier import tiny_classifier  # noqa: F401  (fixture)
from test_metrics import evaluator  # noqa: F401  (fixture)


def test_evaluating_the_fixture(fixtures_dir, evaluator):
    pipe = sdm.load_pipeline("tiny-sdm", fixtures_dir)
    ann = sdm.load_pipeline("tiny-ann", fixtures_dir)
    scales = [0.99, 1.0, 1.01]
    m, images = measure.evaluate_pipeline(pipe, evaluator, n=16, steps=2, sweep_scales=scales, sweep_n=8,
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
        measure.evaluate_pipeline(ann, evaluator, n=2, steps=1, sweep_scales=[1.0], energy=False)
    with pytest.raises(ValueError, match="--data"):
        measure.dataset_of(ann)                                   # the fixture's card names no data set
