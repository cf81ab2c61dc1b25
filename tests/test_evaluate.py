"""sdm.evaluate, the command line: exit codes, JSON and table output, and the card it writes.

The measurements themselves are tested in test_metrics.py and test_measure.py; test_classifier.py's tiny classifier
(trained on scikit-learn's 8x8 digits, upscaled to 28x28) stands in for the shipped ones here. Under ~30 s.
"""
import hashlib
import json
import shutil

import numpy as np
import pytest

import sdm
from sdm import evaluate as ev
from sdm import measure
from test_classifier import tiny_classifier  # noqa: F401  (fixture)
from test_metrics import evaluator  # noqa: F401  (fixture)


def _tree_digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_cli_missing_classifier_exits_with_the_command(fixtures_dir, tmp_path, capsys):
    rc = ev.main(["--checkpoint", str(fixtures_dir / "tiny-sdm"), "--data", "mnist", "--classifiers-dir",
                  str(tmp_path), "--no-write", "--no-progress"])
    assert rc == 2
    assert "python -m sdm.evaluate --train-classifier mnist" in capsys.readouterr().err


def test_writing_an_evaluation_updates_the_card_of_a_copy(fixtures_dir, tmp_path, evaluator):
    before = _tree_digest(fixtures_dir)
    folder = shutil.copytree(fixtures_dir / "tiny-sdm", tmp_path / "tiny-sdm")
    card_before = json.loads((folder / "card.json").read_text())
    pipe = sdm.load_pipeline(folder)
    m, images = measure.evaluate_pipeline(pipe, evaluator, n=4, steps=1, sweep_scales=[0.99, 1.0], sweep_n=2,
                                          energy_images=1)
    ev.write_evaluation(folder, m, images, ev.report_markdown(pipe.name, m))
    card = json.loads((folder / "card.json").read_text())
    assert card["metrics"]["fid"] == m["fid"] and card["metrics"]["best_scale"] == m["best_scale"]
    assert card["model"] == card_before["model"] and card["training"] == card_before["training"]
    assert card["samples_grid"] == "samples.png" and (folder / "samples.png").stat().st_size > 0
    readme = (folder / "README.md").read_text()
    assert "![samples_grid](samples.png)" in readme and "Best scale" in readme and "| FID |" in readme
    assert _tree_digest(fixtures_dir) == before                 # the fixtures are never touched


def test_cli_evaluates_a_copy_and_prints_json(fixtures_dir, tmp_path, evaluator, monkeypatch, capsys):
    folder = shutil.copytree(fixtures_dir / "tiny-sdm-vanilla", tmp_path / "tiny-sdm-vanilla")
    monkeypatch.setattr(ev, "make_evaluator", lambda *a, **k: evaluator)
    rc = ev.main(["--checkpoint", str(folder), "--data", "digits28", "--n", "8", "--steps", "1", "--sweep",
                  "--sweep-scales", "0.95,1.05", "--sweep-n", "4", "--compare", str(fixtures_dir / "tiny-ann"),
                  "--json", "--no-progress", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    m = json.loads(out)
    assert m["fid_n"] == 8 and [r["scale"] for r in m["threshold_sweep"]] == [0.95, 1.05]
    assert m["ann_compare"]["checkpoint"] == "tiny-ann" and m["command"].startswith("python -m sdm.evaluate")
    assert json.loads((folder / "card.json").read_text())["metrics"]["fid"] == m["fid"]


def test_cli_sweep_only_adds_the_sweep_and_keeps_the_main_metrics(fixtures_dir, tmp_path, evaluator, monkeypatch,
                                                                   capsys):
    folder = shutil.copytree(fixtures_dir / "tiny-sdm-vanilla", tmp_path / "tiny-sdm-vanilla")
    monkeypatch.setattr(ev, "make_evaluator", lambda *a, **k: evaluator)
    args = ["--checkpoint", str(folder), "--data", "digits28", "--steps", "1", "--no-progress", "--threads", "1"]
    # a card without main metrics: nothing to keep, so it says to evaluate first
    card = json.loads((folder / "card.json").read_text())
    card.pop("metrics", None)
    (folder / "card.json").write_text(json.dumps(card))
    try:
        ev.main(args + ["--sweep-only", "--sweep-n", "4"])
        raise AssertionError("no error")
    except SystemExit as e:
        assert "evaluate it first" in str(e)
    assert ev.main(args + ["--n", "8", "--compare", "none"]) == 0
    main = json.loads((folder / "card.json").read_text())["metrics"]
    assert ev.main(args + ["--sweep-only", "--sweep-n", "4", "--sweep-scales", "0.95,1.0,1.05"]) == 0
    m = json.loads((folder / "card.json").read_text())["metrics"]
    assert [r["scale"] for r in m["threshold_sweep"]] == [0.95, 1.0, 1.05] and m["sweep_n"] == 4
    assert m["best_scale"] in (0.95, 1.0, 1.05) and "--sweep-only" in m["sweep_command"]
    assert {k: m[k] for k in ("fid", "fid_n", "command", "evaluated_at")} == \
        {k: main[k] for k in ("fid", "fid_n", "command", "evaluated_at")}             # the main run's, kept
    readme = (folder / "README.md").read_text()
    assert "Best scale" in readme and "The sweep was measured on its own: `python -m sdm.evaluate" in readme
    capsys.readouterr()


def test_cli_table_of_several_checkpoints(fixtures_dir, evaluator, monkeypatch, capsys):
    monkeypatch.setattr(ev, "make_evaluator", lambda *a, **k: evaluator)
    rc = ev.main(["--checkpoints", "tiny-sdm", "tiny-missing", "tiny-ann", "--checkpoints-dir", str(fixtures_dir),
                  "--data", "digits28", "--n", "4", "--steps", "1", "--no-energy", "--no-write", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [l for l in out.splitlines() if l.startswith("| tiny")]
    assert [l.split("|")[1].strip() for l in lines] == ["tiny-sdm", "tiny-missing", "tiny-ann"]
    assert "not found" in lines[1] and "| ANN | ann | 1 |" in lines[2] and "| direct training | lif |" in lines[0]


def test_cli_table_takes_matching_card_metrics_and_evaluates_the_rest(fixtures_dir, tmp_path, evaluator,
                                                                      monkeypatch, capsys):
    for name in ("tiny-sdm", "tiny-ann"):
        shutil.copytree(fixtures_dir / name, tmp_path / name)
    card = json.loads((tmp_path / "tiny-sdm" / "card.json").read_text())
    card["metrics"] = {"fid": 12.5, "fid_n": 4, "steps": 1, "sampler": "ddim", "seed": 0, "coverage": 0.5,
                       "mean_confidence": 0.7, "fid_features": "test features"}
    card["conversion"] = {"bits": 2, "T": 3, "finetune": None}
    (tmp_path / "tiny-sdm" / "card.json").write_text(json.dumps(card))
    monkeypatch.setattr(ev, "make_evaluator", lambda *a, **k: evaluator)
    args = ["--checkpoints", "tiny-sdm", "tiny-ann", "--checkpoints-dir", str(tmp_path), "--data", "digits28",
            "--steps", "1", "--no-energy", "--no-write", "--no-progress", "--from-cards"]
    assert ev.main(args + ["--n", "4"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| tiny")]
    assert "| converted from 2-bit QANN |" in lines[0] and "| 12.50 |" in lines[0]      # from its card
    assert "| 12.50 |" not in lines[1]                                                   # sampled
    assert ev.main(args + ["--n", "6"]) == 0                       # another n: the card does not match
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| tiny")]
    assert "| 12.50 |" not in lines[0]


def test_table_names_the_route_of_each_model():
    from types import SimpleNamespace
    from sdm import ModelConfig
    m = {"fid": 10.0, "coverage": 1.0, "mean_confidence": 0.9, "fid_n": 4, "sampler": "ddim", "steps": 1, "seed": 0,
         "fid_features": "f"}
    rows = [("q", m, SimpleNamespace(config=ModelConfig(neuron="qann", bits=3), card={})),
            ("c", m, SimpleNamespace(config=ModelConfig(neuron="if", T=3), card={"conversion": {"bits": 2, "finetune": {"steps": 5}}})),
            ("d", m, SimpleNamespace(config=ModelConfig(), card={})),
            ("a", m, SimpleNamespace(config=ModelConfig(neuron="ann"), card={}))]
    routes = [l.split("|")[2].strip() for l in ev.comparison_table(rows).splitlines()[2:6]]
    assert routes == ["3-bit quantised ANN", "converted from 2-bit QANN + fine-tune", "direct training", "ANN"]


def test_cli_compares_with_the_ann_counterpart_it_finds(fixtures_dir, tmp_path, evaluator, monkeypatch, capsys):
    monkeypatch.setattr(ev, "make_evaluator", lambda *a, **k: evaluator)
    args = ["--checkpoint", "tiny-sdm", "--data", "digits28", "--n", "4", "--steps", "1", "--no-energy",
            "--no-write", "--no-progress", "--json"]
    assert ev.main(args + ["--checkpoints-dir", str(fixtures_dir)]) == 0     # 'tiny-sdm' -> 'tiny-ann'
    assert json.loads(capsys.readouterr().out)["ann_compare"]["checkpoint"] == "tiny-ann"
    shutil.copytree(fixtures_dir / "tiny-sdm", tmp_path / "tiny-sdm")
    assert ev.main(args + ["--checkpoints-dir", str(tmp_path)]) == 0         # none there: a note, no comparison
    out = capsys.readouterr()
    assert "ann_compare" not in json.loads(out.out) and "no ANN counterpart 'tiny-ann'" in out.err


def test_time_steps_at_inference_are_used_and_recorded(fixtures_dir, evaluator):
    pipe = sdm.load_pipeline(fixtures_dir / "tiny-sdm")
    T = pipe.config.T
    trained, _ = measure.evaluate_pipeline(pipe, evaluator, n=4, steps=2, energy_images=1)
    doubled, images = measure.evaluate_pipeline(pipe, evaluator, n=4, steps=2, energy_images=1, time_steps=2 * T)
    assert "time_steps" not in trained and doubled["time_steps"] == 2 * T
    assert np.array_equal(images, pipe.sample(n=4, num_inference_steps=2, time_steps=2 * T))
    assert doubled["energy"]["snn_mj"] != trained["energy"]["snn_mj"]       # the energy of the T actually run
    ann = sdm.load_pipeline(fixtures_dir / "tiny-ann")
    with pytest.raises(ValueError, match="ANN"):
        measure.evaluate_pipeline(ann, evaluator, n=4, steps=1, time_steps=2)
