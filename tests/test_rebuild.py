"""sdm.rebuild: a model's weights in a model of other options, and a quantised ANN's clips calibrated from its ANN.

Rebuilding through ``python -m sdm.train --init-from`` (neuron, T, dynamics) is tested in test_train.py.
"""
import json

import pytest

from sdm.checkpoints import load_checkpoint
from sdm.data import load_dataset
from sdm.rebuild import calibrate_clips, rebuild_model
from sdm.train import main as train_main
from test_train import TINY


def test_a_quantised_ann_from_an_ann_gets_clips_calibrated_from_the_anns_activations(tmp_path):
    ann_dir = tmp_path / "ann"
    assert train_main(TINY + ["--out", str(ann_dir), "--steps", "4", "--neuron", "ann"]) == 0
    ann = load_checkpoint(ann_dir, "cpu")[0]
    images = load_dataset("digits", "train").images
    alphas = {}
    for p in (50.0, 99.0):
        q, _ = rebuild_model(ann, neuron="qann", bits=2)
        clips = calibrate_clips(ann, q, images, p, n=32)
        assert set(clips) == set(ann.layer_names())
        assert all(m.alpha.item() == pytest.approx(clips[name]) for name, m in q.activations())
        alphas[p] = clips
    assert all(alphas[99.0][k] > alphas[50.0][k] for k in alphas[50.0])  # a higher percentile, a wider clip
    # through the command line: the card says so, and alpha is no longer the default 6.0
    q_dir = tmp_path / "q"
    assert train_main(TINY + ["--out", str(q_dir), "--steps", "1", "--init-from", str(ann_dir), "--neuron", "qann",
                              "--clip-percentile", "90", "--lr", "0", "--min-lr", "0", "--warmup", "0"]) == 0
    note = json.loads((q_dir / "card.json").read_text())["training"]["init"]
    assert "calibrated to the 90th percentile" in note
    q = load_checkpoint(q_dir, "cpu")[0]
    assert all(float(m.alpha) != 6.0 for _, m in q.activations())
    # 0 keeps the default clip
    q0 = tmp_path / "q0"
    assert train_main(TINY + ["--out", str(q0), "--steps", "1", "--init-from", str(ann_dir), "--neuron", "qann",
                              "--clip-percentile", "0", "--lr", "0", "--min-lr", "0", "--warmup", "0"]) == 0
    assert all(float(m.alpha) == 6.0 for _, m in load_checkpoint(q0, "cpu")[0].activations())
