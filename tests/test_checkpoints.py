import json
import shutil

import pytest

import sdm
from sdm.checkpoints import list_checkpoints, load_checkpoint


@pytest.fixture
def ckpt(tmp_path, fixtures_dir):
    dst = tmp_path / "m"
    shutil.copytree(fixtures_dir / "tiny-sdm", dst)
    return dst


def test_truncated_weights_name_the_file(ckpt):
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ValueError) as e:
        load_checkpoint(ckpt)
    assert "model.safetensors" in str(e.value) and "truncated" in str(e.value)


def test_garbage_weights_name_the_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(ckpt)


def test_corrupted_config_names_the_file(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_checkpoint(ckpt)


def test_missing_file_is_named(ckpt):
    (ckpt / "card.json").unlink()
    with pytest.raises(FileNotFoundError, match="card.json"):
        load_checkpoint(ckpt)


def test_weights_that_do_not_fit_the_config(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["base_channels"] = 16
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match|shapes"):
        load_checkpoint(ckpt)


def test_no_pickle_files_and_cards_exist(fixtures_dir):
    for name in list_checkpoints(fixtures_dir):
        files = {p.name for p in (fixtures_dir / name).iterdir()}
        assert {"model.safetensors", "config.json", "card.json", "README.md"} <= files
        assert not any(f.endswith((".pt", ".pth", ".pkl", ".ckpt")) for f in files)


def test_env_var_selects_the_checkpoint_folder(monkeypatch, fixtures_dir):
    monkeypatch.setenv("SDM_CHECKPOINTS", str(fixtures_dir))
    assert "tiny-sdm" in sdm.list_checkpoints()
    assert sdm.load_pipeline("tiny-sdm").name == "tiny-sdm"


def test_card_renders_multi_line_texts_as_titled_sections():
    from sdm.checkpoints import render_card
    text = render_card({"name": "x", "model": {"T": 4}, "findings": "- one\n- two", "evaluation_notes": "a\nb",
                        "samples_grid": "samples.png", "seed": 0})
    lines = text.splitlines()
    assert lines[0] == "# x" and "## Model" in lines and "- **T**: 4" in lines
    i = lines.index("## Findings")
    assert lines[i + 1:i + 4] == ["", "- one", "- two"]
    assert "## Evaluation notes" in lines and "![samples_grid](samples.png)" in lines and "- **seed**: 0" in lines
