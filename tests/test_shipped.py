"""The checkpoints shipped in checkpoints/: each loads, is safetensors only, every file at most 10 MB, and has a
model card that says how it was made (command, steps, wall time, machine) and what it reached (FID, grid)."""
import pytest
import torch

from sdm.checkpoints import MAX_FILE_BYTES, checkpoints_dir, list_checkpoints, load_checkpoint, read_card
from sdm.unet import count_parameters

SHIPPED = list_checkpoints()
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints in this tree")


def test_the_app_default_and_its_baselines_are_shipped():
    assert {"fmnist-sdm-t4", "fmnist-sdm-t4-vanilla", "fmnist-ann", "mnist-sdm-t4"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_and_has_a_card(name):
    folder = checkpoints_dir() / name
    for f in folder.rglob("*"):
        if f.is_file() and "train_state" not in f.parts:
            assert f.stat().st_size <= MAX_FILE_BYTES, f"{f} is over 10 MB"
            assert f.suffix not in {".pt", ".pth", ".pkl", ".pickle", ".ckpt"}, f"{f}: pickle weights"
    model, diffusion, card = load_checkpoint(folder)
    assert card == read_card(folder)
    tr = card["training"]
    assert tr["command"].startswith("python -m sdm.train") and tr["steps"] > 0
    assert tr["wall_time_s"] > 0 and isinstance(tr["machine"], str) and tr["machine"]
    conv = card.get("conversion")
    # a converted SNN keeps its source's card, whose count includes one clip alpha per layer
    alphas = len(model.cfg.thresholds) if conv else 0
    assert card["model"]["parameters"] == count_parameters(model) + alphas
    x = torch.zeros(1, model.cfg.image_channels, model.cfg.image_size, model.cfg.image_size)
    with torch.no_grad():
        eps = model(x, torch.tensor([500]))
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    if conv:  # a converted SNN names its quantised source, which ships too, and its T = 2^bits - 1
        assert model.cfg.neuron == "if" and model.cfg.T == 2 ** conv["bits"] - 1 == conv["T"]
        assert conv["source"] in SHIPPED
        assert conv["command"].startswith("python -m sdm.convert")
    metrics = card.get("metrics")
    if metrics:  # evaluated: the figures and the sample grid are there
        assert metrics["fid"] > 0 and metrics["fid_n"] >= 200 and 0 <= metrics["coverage"] <= 1
        assert (folder / "samples.png").is_file()
        assert f"{metrics['fid']:.2f}" in (folder / "README.md").read_text()
