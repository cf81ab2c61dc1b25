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
    cfg = ModelConfig(**SMALL, tsm=True, readout="decay")
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


def _gaussian_images(n, size=8, rank=6, seed=0):
    """n images (drawn with ``seed``) of one known Gaussian law: mean m, covariance A A^T of low rank (correlated
    pixels)."""
    g = torch.Generator().manual_seed(1234)
    d = size * size
    A = torch.randn(d, rank, generator=g, dtype=torch.float64) * 0.4
    m = torch.randn(d, generator=g, dtype=torch.float64) * 0.3
    x = m + torch.randn(n, rank, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ A.T
    return x.float().view(n, 1, size, size), m, A @ A.T


def test_wiener_skip_is_the_scalar_skip_until_it_has_statistics():
    cfg = ModelConfig(**SMALL, image_size=8, precondition=True)
    torch.manual_seed(0)
    scalar = SpikingUNet(cfg).eval()
    torch.nn.init.normal_(scalar.out.conv.weight, std=0.1)
    wiener = SpikingUNet(cfg.replace(skip="wiener")).eval()
    wiener.load_state_dict(scalar.state_dict(), strict=False)  # the same weights; the skip buffers stay isotropic
    assert set(wiener.state_dict()) - set(scalar.state_dict()) == {"skip_mean", "skip_basis", "skip_var"}
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 400, 990])
    with torch.no_grad():
        assert torch.allclose(wiener(x, t), scalar(x, t), atol=1e-6)
        wiener.set_skip_statistics(_gaussian_images(500)[0])
        assert not torch.allclose(wiener(x, t), scalar(x, t), atol=1e-2)


def test_wiener_skip_is_the_linear_mmse_guess_of_the_noise_and_c_out_its_residual():
    images, m, cov = _gaussian_images(4000)
    cfg = ModelConfig(**SMALL, image_size=8, precondition=True, skip="wiener")
    model = SpikingUNet(cfg).eval()  # the output conv starts at zero: the prediction is the skip alone
    model.set_skip_statistics(images)
    assert torch.allclose(model.skip_mean.double(), images.view(4000, -1).double().mean(0), atol=1e-6)
    rebuilt = model.skip_basis.double() @ torch.diag(model.skip_var.double()) @ model.skip_basis.double().T
    assert torch.allclose(rebuilt, images.view(4000, -1).double().T.cov(), atol=1e-4)
    x0 = _gaussian_images(2000, seed=1)[0]  # fresh images of the same law
    g = torch.Generator().manual_seed(2)
    for step in (20, 200, 600):
        abar = model.alphas_cumprod[step].double()
        eps = torch.randn(x0.shape, generator=g)
        xt = (abar.sqrt() * x0 + (1 - abar).sqrt() * eps).float()
        t = torch.full((len(x0),), step)
        with torch.no_grad():
            pred = model(xt, t)
            c_out = model.analog_skip(xt, t)[1]
        mse = float(((pred - eps) ** 2).mean())
        # the error the linear MMSE estimator leaves, from the true law: tr(I - (1-ab) (ab C + (1-ab) I)^-1) / d
        d = cov.shape[0]
        inv = torch.linalg.inv(abar * cov + (1 - abar) * torch.eye(d, dtype=torch.float64))
        theory = float((torch.eye(d, dtype=torch.float64) - (1 - abar) * inv).trace() / d)
        scalar = SpikingUNet(cfg.replace(skip="scalar", sigma_data=float(images.pow(2).mean().sqrt()))).eval()
        with torch.no_grad():
            scalar_mse = float(((scalar(xt, t) - eps) ** 2).mean())
        assert mse == pytest.approx(theory, rel=0.1)
        assert float(c_out[0]) ** 2 == pytest.approx(theory, rel=0.1)  # c_out: the scale of what is left
        assert mse < 0.8 * scalar_mse  # correlated pixels: the full covariance guesses far more of the noise


def test_wiener_skip_keeps_float32_under_bf16_and_its_statistics_through_a_checkpoint(tmp_path):
    cfg = ModelConfig(**SMALL, image_size=8, precondition=True, skip="wiener")
    model = SpikingUNet(cfg).eval()
    model.set_skip_statistics(_gaussian_images(300)[0])
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([50, 700])
    with torch.no_grad():
        exact = model(x, t)  # zero output conv: the skip alone
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x, t)
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, exact, atol=1e-6)
    save_checkpoint(tmp_path / "m", model, DiffusionConfig(), {"name": "m"})
    loaded, _, _ = load_checkpoint(tmp_path / "m")
    assert loaded.cfg.skip == "wiener" and torch.equal(loaded.skip_basis, model.skip_basis)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), exact)


def test_wiener_skip_needs_preconditioning_and_a_known_kind():
    with pytest.raises(ValueError, match="precondition=True"):
        ModelConfig(skip="wiener")
    with pytest.raises(ValueError, match="skip must be"):
        ModelConfig(precondition=True, skip="pca")
    with pytest.raises(ValueError, match="3072x3072 eigenvector matrix .* use skip 'scalar'"):
        ModelConfig(precondition=True, skip="wiener", image_channels=3, image_size=32)
    model = SpikingUNet(ModelConfig(**SMALL, image_size=8, precondition=True, skip="wiener"))
    with pytest.raises(ValueError, match=r"\(1, 4, 4\), the model takes \(1, 8, 8\)"):
        model.set_skip_statistics(torch.randn(10, 1, 4, 4))
    with pytest.raises(ValueError, match="not 'wiener'"):
        SpikingUNet(ModelConfig(**SMALL, precondition=True)).set_skip_statistics(torch.randn(10, 1, 28, 28))


def test_tsm_weights_are_made_on_the_models_device():
    # a neuron has no tensors of its own, so TSM weights once landed on the CPU beside a CUDA model
    # ("meta" stands in for CUDA here: a model on it runs nowhere, but tensors keep their device)
    model = SpikingUNet(ModelConfig(image_size=8, base_channels=4, channel_mult=(1, 2), T=2), DiffusionConfig())
    model.to("meta")
    model.enable_tsm()
    devices = {str(w.device) for w in model.tsm_weights().values()}
    assert devices == {"meta"}
    assert len(model.tsm_weights()) == len(list(model.neurons()))


def test_current_readout_reads_the_float_stream_without_a_last_spiking_layer():
    spikes_cfg = ModelConfig(**SMALL)
    model = SpikingUNet(spikes_cfg).eval()
    torch.nn.init.normal_(model.out.conv.weight, std=0.1)
    current = SpikingUNet(spikes_cfg.replace(readout_from="current")).eval()
    current.load_state_dict(model.state_dict())  # no weights added or dropped: the same state dict fits both
    assert current.layer_names() == model.layer_names()[:-1] and model.layer_names()[-1] == "out.act"
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 600])
    with torch.no_grad():
        # thresholds so high that no neuron fires: the spike readout sees nothing but the output bias, the current
        # readout still sees the analog paths (the first conv, carried by the skips and 1x1 shortcuts)
        silent = model(x, t, threshold_scale=1e6)
        assert torch.allclose(silent, model.out.conv.bias.view(1, -1, 1, 1).expand_as(silent))
        a, b = current(x, t, threshold_scale=1e6), current(-x, t, threshold_scale=1e6)
        assert not torch.allclose(a, b)
        # with every neuron silent the path left is affine in x_t: f(x) + f(-x) = 2 f(0)
        zero = current(torch.zeros_like(x), t, threshold_scale=1e6)
        assert torch.allclose(a + b, 2 * zero, atol=1e-5)
    with pytest.raises(ValueError, match="readout_from must be 'spikes' or 'current'"):
        ModelConfig(readout_from="membrane")
