import copy

import pytest
import torch

from sdm import ModelConfig, SpikingUNet
from sdm.checkpoints import load_checkpoint, save_checkpoint
from sdm.config import DiffusionConfig, load_config, save_config

SMALL = dict(base_channels=8, channel_mult=(1, 2), time_embed_dim=16)


def test_ann_counterpart_has_identical_convolutions():
    snn = SpikingUNet(ModelConfig(**SMALL, neuron="lif"))
    ann = SpikingUNet(ModelConfig(**SMALL, neuron="ann"))
    s = {k: v.shape for k, v in snn.state_dict().items()}
    a = {k: v.shape for k, v in ann.state_dict().items()}
    assert s == a
    assert len(snn.layer_names()) == len(ann.layer_names()) and snn.layer_names() == ann.layer_names()


def test_config_round_trip_gives_identical_outputs(tmp_path):
    cfg = ModelConfig(**SMALL, tsm=True, threshold=0.9)
    model = SpikingUNet(cfg).eval()
    torch.nn.init.normal_(model.out.conv.weight, std=0.1)
    save_checkpoint(tmp_path / "m", model, DiffusionConfig(), {"name": "m"})
    loaded, diffusion, card = load_checkpoint(tmp_path / "m")
    assert loaded.cfg == cfg and diffusion == DiffusionConfig() and card["name"] == "m"
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 600])
    with torch.no_grad():
        assert torch.equal(model(x, t), loaded(x, t))
    save_config(tmp_path / "c.json", cfg, DiffusionConfig())
    assert load_config(tmp_path / "c.json")[0] == cfg


def test_fused_batchnorm_matches_unfused():
    model = SpikingUNet(ModelConfig(**SMALL)).eval()
    torch.nn.init.normal_(model.out.conv.weight, std=0.1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 600])
    with torch.no_grad():
        ref = model(x, t)
        fused = copy.deepcopy(model).fuse_batchnorm()(x, t)
    assert torch.allclose(ref, fused, atol=1e-4)


def test_channels_last_inference_matches_the_plain_model_and_keeps_its_layout():
    # channels-last weights and activations, 1x1 shortcuts as a matrix product: the same noise prediction (up to
    # rounding), and every convolution fed by spikes in that layout (a copy would cost a pass per layer), but the
    # readout's: its input is the mean over T, one small image per sample
    torch.manual_seed(0)
    model = SpikingUNet(ModelConfig(**SMALL)).eval()
    torch.nn.init.normal_(model.out.conv.weight, std=0.1)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([3, 600, 999])
    fast = copy.deepcopy(model).channels_last()
    layouts = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: layouts.append(
        args[0].is_contiguous(memory_format=torch.channels_last))) for m in fast.modules()
        if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m is not fast.out.conv]
    with torch.no_grad():
        ref, got = model(x, t), fast(x, t)
    for h in hooks:
        h.remove()
    assert torch.allclose(ref, got, atol=1e-4) and layouts and all(layouts)
    assert fast.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_readout_equals_mean_of_per_step_outputs():
    """The output conv applied to the mean of the spikes equals the mean of T conv outputs."""
    model = SpikingUNet(ModelConfig(**SMALL)).eval()
    torch.nn.init.normal_(model.out.conv.weight, std=0.1)
    torch.nn.init.normal_(model.out.conv.bias, std=0.1)
    spikes = (torch.rand(4 * 2, 8, 28, 28) > 0.7).float()
    per_step = model.out.conv(spikes).view(4, 2, 1, 28, 28).mean(0)
    combined = model.out.conv(spikes.view(4, 2, 8, 28, 28).mean(0))
    assert torch.allclose(per_step, combined, atol=1e-5)


def test_direct_encoding_is_constant_over_T():
    """conv_in sees x_t once; the first spiking layer gets the same current at every time step."""
    model = SpikingUNet(ModelConfig(**SMALL)).eval()
    seen = {}

    class M:
        def on_spikes(self, layer, spikes, v, threshold):
            seen.setdefault(layer.name, v)

        def on_synapses(self, *a):
            pass

    with torch.no_grad():
        model(torch.randn(1, 1, 28, 28), torch.tensor([5]), monitor=M())
    v = seen[model.layer_names()[0]]
    # U[0] = I and, for neurons that never spiked, U[1] = beta * I + I
    i0 = v[0]
    quiet = (v < 1.0).all(0)
    assert torch.allclose(v[1][quiet], (0.9 * i0 + i0)[quiet], atol=1e-5)


def test_bad_config_is_refused():
    import pytest
    with pytest.raises(ValueError, match="neuron"):
        ModelConfig(neuron="relu")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(image_size=30, channel_mult=(1, 2, 4))


def test_preconditioning_adds_an_analog_skip_weighted_by_the_schedule():
    cfg = ModelConfig(**SMALL, precondition=True)
    model = SpikingUNet(cfg).eval()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999])
    c_skip, c_out = model.precondition_weights(t)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()[t]
    s2 = cfg.sigma_data ** 2
    # the best linear guess of eps from x_t, and the scale of what remains (both from the schedule)
    assert torch.allclose(c_skip, (1 - abar).sqrt() / (1 - abar + abar * s2))
    assert torch.allclose(c_out ** 2, abar * s2 / (1 - abar + abar * s2))
    assert c_skip[0] < 0.05 and c_out[0] > 0.99 and c_skip[2] > 0.99 and c_out[2] < 0.01
    with torch.no_grad():  # the output conv starts at zero: the prediction is the skip alone
        assert torch.allclose(model(x, t), c_skip[:, None, None, None] * x)
        torch.nn.init.normal_(model.out.conv.weight, std=0.1)
        plain = SpikingUNet(cfg.replace(precondition=False)).eval()
        plain.load_state_dict(model.state_dict())  # no extra weights: the same state dict fits both
        f = plain(x, t)
        assert torch.allclose(model(x, t), c_skip[:, None, None, None] * x + c_out[:, None, None, None] * f,
                              atol=1e-6)


def test_preconditioning_follows_the_checkpoints_schedule(tmp_path):
    cfg = ModelConfig(**SMALL, precondition=True)
    cosine = DiffusionConfig(beta_schedule="cosine")
    model = SpikingUNet(cfg, cosine).eval()
    save_checkpoint(tmp_path / "m", model, cosine, {"name": "m"})
    loaded, diffusion, _ = load_checkpoint(tmp_path / "m")
    t = torch.tensor([100, 700])
    assert diffusion == cosine and loaded.cfg.precondition
    assert torch.equal(loaded.precondition_weights(t)[0], model.precondition_weights(t)[0])
    assert not torch.equal(loaded.precondition_weights(t)[0], SpikingUNet(cfg).precondition_weights(t)[0])


def test_preconditioning_keeps_its_skip_in_float32_under_bf16():
    model = SpikingUNet(ModelConfig(**SMALL, precondition=True)).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([50, 999])
    with torch.no_grad():
        exact = model(x, t)  # zero output conv: the skip alone
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x, t)
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, exact, atol=1e-6)


def test_tsm_weights_are_made_on_the_models_device():
    # a neuron has no tensors of its own, so TSM weights once landed on the CPU beside a CUDA model
    # ("meta" stands in for CUDA here: a model on it runs nowhere, but tensors keep their device)
    model = SpikingUNet(ModelConfig(image_size=8, base_channels=4, channel_mult=(1, 2), T=2), DiffusionConfig())
    model.to("meta")
    model.enable_tsm()
    devices = {str(w.device) for w in model.tsm_weights().values()}
    assert devices == {"meta"}
    assert len(model.tsm_weights()) == len(list(model.neurons()))



def test_time_steps_override():
    from sdm.neurons import tsm_weights_at
    model = SpikingUNet(ModelConfig(**SMALL, tsm=True)).eval()
    torch.nn.init.normal_(model.out.conv.weight, std=0.1)
    for m in model.neurons():
        m.tsm.data = torch.tensor([0.9, 1.1, 1.2, 1.3])
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 600])
    with torch.no_grad():
        assert torch.equal(model(x, t, time_steps=4), model(x, t))        # the trained T: bit-identical
        eight, one = model(x, t, time_steps=8), model(x, t, time_steps=1)
    assert eight.shape == one.shape == x.shape
    assert not torch.equal(eight, model(x, t)) and not torch.equal(one, model(x, t))
    # the TSM rule: the first T weights, then the last learned one repeated
    p = torch.tensor([0.9, 1.1, 1.2, 1.3])
    assert tsm_weights_at(p, 2).tolist() == pytest.approx([0.9, 1.1])
    assert tsm_weights_at(p, 6).tolist() == pytest.approx([0.9, 1.1, 1.2, 1.3, 1.3, 1.3])
    # T = 8 equals a model trained for T = 8 whose TSM weights follow the rule
    model8 = SpikingUNet(ModelConfig(**SMALL, tsm=True, T=8)).eval()
    model8.load_state_dict({k: (tsm_weights_at(v, 8) if k.endswith(".tsm") else v)
                            for k, v in model.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(model8(x, t), eight)
    for bad in (0, 65, 2.5, "4", True):
        with pytest.raises(ValueError, match="time_steps must be a whole number between 1 and 64"):
            model(x, t, time_steps=bad)
    ann = SpikingUNet(ModelConfig(**SMALL, neuron="ann")).eval()
    with torch.no_grad():
        assert torch.equal(ann(x, t, time_steps=1), ann(x, t))
    with pytest.raises(ValueError, match="ANN"):
        ann(x, t, time_steps=4)
