import json

import pytest

from sdm.config import REMOVED, DiffusionConfig, ModelConfig, load_config, save_config


def _write(tmp_path, **model):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {**ModelConfig().to_dict(), **model}, "diffusion": {}}))
    return path


def test_round_trip(tmp_path):
    cfg = ModelConfig(T=2, tsm=True, thresholds=(0.5, 0.7), precondition=True, sigma_data=0.83)
    save_config(tmp_path / "c.json", cfg, DiffusionConfig(beta_schedule="cosine"), {"note": 1})
    assert load_config(tmp_path / "c.json") == (cfg, DiffusionConfig(beta_schedule="cosine"), {"note": 1})


def test_a_removed_option_at_its_one_remaining_value_loads(tmp_path):
    # what every checkpoint folder written before the options were removed holds
    path = _write(tmp_path, readout="mean", readout_from="spikes", dropout=0, skip="scalar")
    assert load_config(path)[0] == ModelConfig()
    assert load_config(_write(tmp_path, dropout=0.0))[0] == ModelConfig()


@pytest.mark.parametrize("key, value", [("readout", "decay"), ("skip", "wiener"), ("readout_from", "current"),
                                        ("dropout", 0.1)])
def test_a_removed_option_at_another_value_says_which_commit_had_it(tmp_path, key, value):
    commit = REMOVED[key][1]
    with pytest.raises(ValueError, match=rf"option {key}={value!r} was removed because it measured no gain "
                                         rf"\(see docs/EXPERIMENTS.md\).*`git checkout {commit}`"):
        load_config(_write(tmp_path, **{key: value}))


def test_an_unknown_option_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['readout_mode'\]"):
        load_config(_write(tmp_path, readout_mode="mean"))
