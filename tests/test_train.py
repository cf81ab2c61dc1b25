import csv
import json
import signal

import pytest
import torch

from sdm import load_pipeline
from sdm.train import main as train_main

TINY = ["--data", "digits", "--base-channels", "8", "--channel-mult", "1,2", "--time-embed-dim", "16",
        "--batch-size", "32", "--lr", "3e-3", "--warmup", "5", "--log-every", "5", "--no-progress"]


def losses(folder):
    with open(folder / "train_log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_tiny_model_trains_and_loss_falls(tmp_path):
    out = tmp_path / "run"
    assert train_main(TINY + ["--out", str(out), "--steps", "60", "--save-every", "30"]) == 0
    ls = losses(out)
    assert len(ls) == 12
    assert ls[-1] < 0.7 * ls[0]
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps"] == 60 and card["training"]["command"].startswith("python -m sdm.train")
    pipe = load_pipeline(out)
    assert pipe.sample(n=2, num_inference_steps=3).shape == (2, 1, 8, 8)


def test_resume_continues_and_tsm_stage(tmp_path):
    out = tmp_path / "run"
    train_main(TINY + ["--out", str(out), "--steps", "10"])
    assert train_main(TINY + ["--out", str(out), "--steps", "20", "--resume"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps"] == 20
    assert [h["to_step"] for h in card["training"]["history"]] == [10, 20]
    tsm = tmp_path / "tsm"
    assert train_main(TINY + ["--out", str(tsm), "--steps", "10", "--init-from", str(out), "--tsm"]) == 0
    pipe = load_pipeline(tsm)
    assert pipe.config.tsm and len(pipe.tsm_weights()) == len(pipe.layer_names())
    assert any(abs(w - 1).max() > 0 for w in pipe.tsm_weights().values())  # fine-tuned away from 1
    # --tsm-lr: the TSM weights get their own (higher) rate and move further in the same steps
    fast = tmp_path / "tsm-fast"
    assert train_main(TINY + ["--out", str(fast), "--steps", "10", "--init-from", str(out), "--tsm",
                              "--lr", "1e-4", "--tsm-lr", "1e-2"]) == 0
    slow = tmp_path / "tsm-slow"
    assert train_main(TINY + ["--out", str(slow), "--steps", "10", "--init-from", str(out), "--tsm",
                              "--lr", "1e-4"]) == 0
    moved = lambda folder: max(abs(w - 1).max() for w in load_pipeline(folder).tsm_weights().values())
    assert moved(fast) > 5 * moved(slow)
    assert json.loads((fast / "card.json").read_text())["training"]["tsm_lr"] == 1e-2


def test_missing_out_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        train_main(["--data", "digits"])
    assert "--out is required" in capsys.readouterr().err


def test_a_config_file_gives_defaults_and_the_command_line_wins_however_spelled(tmp_path, capsys):
    from sdm.train import parse_args
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"min_lr": 0.5, "channel-mult": [1, 2], "precondition": True, "steps": "7"}))
    args = parse_args(["--config", str(cfg), "--out", "x", "--min", "0.01"])  # an abbreviated flag
    assert args.min_lr == 0.01
    args = parse_args(["--config", str(cfg), "--out", "x"])
    assert (args.min_lr, args.channel_mult, args.precondition, args.steps) == (0.5, "1,2", True, 7)
    assert parse_args(["--out", "x", "--min-lr=0.2", f"--config={cfg}"]).min_lr == 0.2
    cfg.write_text(json.dumps({"readout": "decay"}))  # a removed option is an unknown one
    with pytest.raises(SystemExit):
        parse_args(["--config", str(cfg), "--out", "x"])
    assert f"--config {cfg}: unknown option 'readout'" in capsys.readouterr().err


def test_lr_schedule_warms_up_again_after_a_fresh_optimizer():
    from argparse import Namespace
    from sdm.train import lr_at
    args = Namespace(lr=1e-3, min_lr=0.0, warmup=100, steps=1000)
    assert lr_at(0, args) == pytest.approx(1e-5)
    assert lr_at(99, args) == pytest.approx(1e-3)
    assert lr_at(1000, args) == pytest.approx(0.0)
    plain = lr_at(500, args)
    assert lr_at(500, args, fresh_from=500) == pytest.approx(plain / 100)   # first step after the resume
    assert lr_at(549, args, fresh_from=500) == pytest.approx(lr_at(549, args) / 2)
    assert lr_at(600, args, fresh_from=500) == pytest.approx(lr_at(600, args))  # warmup over


def test_init_from_a_quantised_ann_can_change_its_bits(tmp_path):
    from safetensors.torch import load_file
    b2 = tmp_path / "qann-b2"
    assert train_main(TINY + ["--out", str(b2), "--steps", "6", "--neuron", "qann", "--bits", "2"]) == 0
    b3 = tmp_path / "qann-b3"
    assert train_main(TINY + ["--out", str(b3), "--steps", "2", "--init-from", str(b2), "--bits", "3", "--lr", "0", "--min-lr", "0",
                              "--warmup", "0"]) == 0
    assert json.loads((b3 / "config.json").read_text())["model"]["bits"] == 3
    src, dst = load_file(str(b2 / "model.safetensors")), load_file(str(b3 / "model.safetensors"))
    assert src.keys() == dst.keys()
    assert all((src[k] == dst[k]).all() for k in src if k.endswith(".act.alpha"))
    assert "re-quantised from 2 to 3 bits" in json.loads((b3 / "card.json").read_text())["training"]["init"]


def test_bits_with_init_from_a_spiking_model_is_a_clear_error(tmp_path):
    lif = tmp_path / "lif"
    assert train_main(TINY + ["--out", str(lif), "--steps", "2"]) == 0
    with pytest.raises(SystemExit, match="only a quantised ANN"):
        train_main(TINY + ["--out", str(tmp_path / "x"), "--steps", "2", "--init-from", str(lif), "--bits", "3"])


def test_resume_keeps_the_data_set_of_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    train_main(TINY + ["--out", str(out), "--steps", "4"])
    no_data = [a for a in TINY if a not in ("--data", "digits")]
    # --data left out: the resumed run continues on the checkpoint's data set (digits, 8x8), not on the default
    assert train_main(no_data + ["--out", str(out), "--steps", "6", "--resume"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["model"]["dataset"] == "digits" and card["training"]["steps"] == 6
    # a different --data is refused with the way out, before anything is trained or written
    with pytest.raises(SystemExit) as e:
        train_main(no_data + ["--data", "mnist", "--out", str(out), "--steps", "8", "--resume"])
    assert "trained on 'digits'" in str(e.value) and "--init-from" in str(e.value)
    assert json.loads((out / "card.json").read_text())["training"]["steps"] == 6
    with pytest.raises(SystemExit, match="the checkpoint has --T 4, not 2"):
        train_main(no_data + ["--T", "2", "--out", str(out), "--steps", "8", "--resume"])


def test_init_from_the_ann_counterpart_starts_a_spiking_model_from_its_weights(tmp_path):
    from safetensors.torch import load_file
    ann = tmp_path / "ann"
    assert train_main(TINY + ["--out", str(ann), "--steps", "6", "--neuron", "ann"]) == 0
    snn = tmp_path / "snn"
    zero_lr = ["--lr", "0", "--min-lr", "0", "--warmup", "0"]
    assert train_main(TINY + ["--out", str(snn), "--steps", "1", "--init-from", str(ann), "--neuron", "lif",
                              "--T", "2", "--ema-decay", "0"] + zero_lr) == 0
    cfg = json.loads((snn / "config.json").read_text())["model"]
    assert (cfg["neuron"], cfg["T"]) == ("lif", 2)
    a, s = load_file(str(ann / "model.safetensors")), load_file(str(snn / "model.safetensors"))
    assert set(a) == set(s)
    conv = next(k for k in a if k.endswith("weight") and a[k].dim() == 4)
    assert (a[conv] == s[conv]).all()  # learning rate 0: the ANN's weights, unchanged
    note = json.loads((snn / "card.json").read_text())["training"]["init"]
    assert "neuron ann -> lif" in note and "T 4 -> 2" in note
    # then T=2 -> T=4 with TSM: the TSM weights are new (p = 1), everything else is copied
    t4 = tmp_path / "t4"
    assert train_main(TINY + ["--out", str(t4), "--steps", "1", "--init-from", str(snn), "--T", "4", "--tsm",
                              "--ema-decay", "0"] + zero_lr) == 0
    pipe = load_pipeline(t4)
    assert pipe.config.T == 4 and pipe.config.neuron == "lif"
    assert all(w.shape == (4,) and (w == 1).all() for w in pipe.tsm_weights().values())
    # a resumed or fresh run without --neuron / --T still gets the defaults
    fresh = tmp_path / "fresh"
    assert train_main(TINY + ["--out", str(fresh), "--steps", "1"]) == 0
    cfg = json.loads((fresh / "config.json").read_text())["model"]
    assert (cfg["neuron"], cfg["T"]) == ("lif", 4)


def test_init_from_with_precondition_switches_the_skip_on_and_keeps_every_weight(tmp_path):
    from safetensors.torch import load_file
    base = tmp_path / "base"
    assert train_main(TINY + ["--out", str(base), "--steps", "6"]) == 0
    pc = tmp_path / "pc"
    zero_lr = ["--lr", "0", "--min-lr", "0", "--warmup", "0", "--ema-decay", "0"]
    assert train_main(TINY + ["--out", str(pc), "--steps", "1", "--init-from", str(base), "--precondition"]
                      + zero_lr) == 0
    assert json.loads((pc / "config.json").read_text())["model"]["precondition"] is True
    a, b = load_file(str(base / "model.safetensors")), load_file(str(pc / "model.safetensors"))
    learned = [k for k in a if "running" not in k and "num_batches" not in k]  # BN statistics move in train mode
    assert set(a) == set(b) and len(learned) > 10 and all((a[k] == b[k]).all() for k in learned)
    assert "preconditioning on" in json.loads((pc / "card.json").read_text())["training"]["init"]
    # resuming a run without it, asking for it, is refused with the way out
    with pytest.raises(SystemExit, match="--init-from .* --precondition with a new --out"):
        train_main(TINY[2:] + ["--out", str(base), "--steps", "8", "--resume", "--precondition"])


def test_card_of_a_run_started_from_another_keeps_the_whole_training_behind_it(tmp_path):
    base, stage = tmp_path / "base", tmp_path / "stage"
    assert train_main(TINY + ["--out", str(base), "--steps", "6"]) == 0
    assert train_main(TINY + ["--out", str(stage), "--steps", "2", "--init-from", str(base), "--tsm"]) == 0
    tr = json.loads((stage / "card.json").read_text())["training"]
    base_tr = json.loads((base / "card.json").read_text())["training"]
    assert tr["steps"] == 2 and tr["total_steps"] == 8
    assert tr["init_from"]["name"] == "base" and tr["init_from"]["history"] == base_tr["history"]
    assert tr["total_wall_time_s"] >= base_tr["wall_time_s"] + tr["wall_time_s"] - 0.2
    # resumed, it still names the base run; a stage on top of the stage chains both
    assert train_main(TINY[2:] + ["--out", str(stage), "--steps", "3", "--resume"]) == 0
    tr = json.loads((stage / "card.json").read_text())["training"]
    assert tr["steps"] == 3 and tr["total_steps"] == 9 and tr["init_from"]["name"] == "base"
    top = tmp_path / "top"
    assert train_main(TINY + ["--out", str(top), "--steps", "1", "--init-from", str(stage)]) == 0
    tr = json.loads((top / "card.json").read_text())["training"]
    assert tr["total_steps"] == 10 and tr["init_from"]["init_from"]["name"] == "base"
    # a fresh run has no lineage
    assert "init_from" not in base_tr and "total_steps" not in base_tr


def test_resumed_run_keeps_earlier_metrics_marked_stale_across_saves(tmp_path):
    out = tmp_path / "run"
    train_main(TINY + ["--out", str(out), "--steps", "2"])
    card = json.loads((out / "card.json").read_text())
    card["metrics"] = {"fid": 123.4, "fid_n": 10}
    (out / "card.json").write_text(json.dumps(card))
    assert train_main(TINY + ["--out", str(out), "--steps", "6", "--resume", "--save-every", "2"]) == 0  # 3 saves
    card = json.loads((out / "card.json").read_text())
    assert "metrics" not in card
    assert card["metrics_stale"]["fid"] == 123.4 and card["metrics_stale"]["note"] == "measured at step 2"


def test_init_from_can_change_the_neuron_dynamics_but_not_the_shapes_of_the_weights(tmp_path):
    from safetensors.torch import load_file
    base = tmp_path / "base"
    assert train_main(TINY + ["--out", str(base), "--steps", "4"]) == 0
    sub = tmp_path / "sub"
    zero_lr = ["--lr", "0", "--min-lr", "0", "--warmup", "0", "--ema-decay", "0"]
    assert train_main(TINY + ["--out", str(sub), "--steps", "1", "--init-from", str(base), "--reset", "subtract",
                              "--beta", "1.0"] + zero_lr) == 0
    cfg = json.loads((sub / "config.json").read_text())["model"]
    assert (cfg["reset"], cfg["beta"]) == ("subtract", 1.0)
    a, b = load_file(str(base / "model.safetensors")), load_file(str(sub / "model.safetensors"))
    learned = [k for k in a if "running" not in k and "num_batches" not in k]
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in learned)
    note = json.loads((sub / "card.json").read_text())["training"]["init"]
    assert "reset zero -> subtract" in note and "beta 0.9 -> 1.0" in note
    assert load_pipeline(sub).model.neurons()[0].reset == "subtract"
    # options the source already has are accepted as they are (TINY repeats its width)
    # a width that does not fit the weights is refused before anything is written
    with pytest.raises(SystemExit, match="--base-channels 16: the weights of .* are for --base-channels 8"):
        train_main(TINY[:2] + ["--base-channels", "16"] + TINY[4:]
                   + ["--out", str(tmp_path / "wide"), "--steps", "1", "--init-from", str(base)])
    assert not (tmp_path / "wide").exists()
    # a fresh run without the flags gets ModelConfig's defaults
    cfg = json.loads((base / "config.json").read_text())["model"]
    assert (cfg["reset"], cfg["beta"], cfg["num_res_blocks"]) == ("zero", 0.9, 1)
    # resuming with another reset is refused with the way out
    with pytest.raises(SystemExit, match="the checkpoint has --reset subtract, not zero.*--init-from"):
        train_main(TINY[2:] + ["--out", str(sub), "--steps", "3", "--resume", "--reset", "zero"])
    with pytest.raises(SystemExit, match="has --channel-mult 1,2, not 1,2,2.*train a new model"):
        train_main(TINY[2:4] + ["--channel-mult", "1,2,2"] + TINY[6:]
                   + ["--out", str(sub), "--steps", "3", "--resume"])


def test_a_loss_that_is_not_finite_stops_the_run_with_a_clear_error(tmp_path, monkeypatch):
    import sdm.train as train

    real = train.train_step
    calls = []

    def poisoned(*args, **kwargs):  # the real step, then a loss gone to nan from the 3rd step on
        loss = real(*args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(train, "train_step", poisoned)
    with pytest.raises(SystemExit, match=r"loss became nan by step 5; lower --lr"):
        train_main(TINY + ["--out", str(tmp_path / "run"), "--steps", "20"])
    assert len(calls) == 5  # noticed at the first logged step (--log-every 5), not at the end of the run


def _signal_at(monkeypatch, calls_to_signal: dict[int, list]):
    """Make the n-th training step send this process the given signals, as Ctrl-C or `kill` would."""
    import os
    import sdm.train as train

    real = train.train_step
    calls = []

    def step_then_signal(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls.append(1)
        for sig in calls_to_signal.get(len(calls), []):
            os.kill(os.getpid(), sig)
        return loss

    monkeypatch.setattr(train, "train_step", step_then_signal)
    return calls


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_kill_finishes_the_step_saves_and_the_run_resumes_from_there(tmp_path, monkeypatch, capsys, sig):
    out = tmp_path / "run"
    before = signal.getsignal(sig)
    calls = _signal_at(monkeypatch, {7: [sig]})
    assert train_main(TINY + ["--out", str(out), "--steps", "20", "--save-every", "100"]) == 0
    assert len(calls) == 7
    assert signal.getsignal(sig) is before  # the handler is put back
    err = capsys.readouterr().err
    assert f"{sig.name}: finishing this step, then saving" in err and "plus --resume" in err
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps"] == 7 and card["training"]["complete"] is False
    monkeypatch.undo()
    assert train_main(TINY + ["--out", str(out), "--steps", "12", "--resume"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert [h["to_step"] for h in card["training"]["history"]] == [7, 12] and card["training"]["complete"]


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = _signal_at(monkeypatch, {3: [signal.SIGINT, signal.SIGINT]})
    with pytest.raises(KeyboardInterrupt):
        train_main(TINY + ["--out", str(out), "--steps", "20", "--save-every", "100"])
    assert len(calls) == 3 and not (out / "card.json").exists()


def test_ctrl_c_during_a_save_never_cuts_the_save_short(tmp_path, monkeypatch, capsys):
    import os
    import sdm.train as train

    real = train.save_checkpoint

    def impatient_save(*args, **kwargs):  # Ctrl-C twice while the checkpoint is being written
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "save_checkpoint", impatient_save)
    out = tmp_path / "run"
    assert train_main(TINY + ["--out", str(out), "--steps", "20", "--save-every", "4"]) == 0
    assert "saving the checkpoint; it stops right after that" in capsys.readouterr().err
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps"] == 5 and not card["training"]["complete"]  # the save at 4, then one more step
    assert load_pipeline(out).sample(n=1, num_inference_steps=2).shape == (1, 1, 8, 8)


def test_torchrun_trains_one_model_with_ddp_across_two_processes(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sdm.train", *TINY, "--batch-size", "16", "--out", str(out), "--steps", "12", "--stop-at", "7"]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((out / "card.json").read_text())
    # --stop-at 7 is not a logged step: both ranks still stop there together (a rank left behind would hang)
    assert card["training"]["steps"] == 7 and card["training"]["batch_size"] == 32
    assert "2 process(es)" in card["training"]["machine"]
    assert load_pipeline(out).sample(n=1, num_inference_steps=2).shape == (1, 1, 8, 8)
