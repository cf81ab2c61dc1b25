import numpy as np
import pytest
import torch

from sdm import ModelConfig, SpikingUNet
from sdm.convert import convert
from sdm.neurons import QuantClipReLU, SpikingNeuron


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_if_neuron_counts_equal_quantised_activation(bits):
    """Constant input: spike count over T = 2^b - 1 equals the quantised clip-ReLU activation x T / alpha."""
    L, alpha = 2 ** bits - 1, 1.7
    q = QuantClipReLU(bits=bits, alpha=alpha)
    x = torch.linspace(-1, 2.5 * alpha, 997)
    x = x[(torch.abs((x / alpha * L) % 1 - 0.5) > 1e-3)]  # away from rounding ties
    with torch.no_grad():
        ann = q(x[None])[0]
        neuron = SpikingNeuron(L, beta=1.0, threshold=alpha, reset="subtract", v_init=0.5)
        count = neuron(x.expand(L, -1).clone()).sum(0)
    assert torch.allclose(count * alpha / L, ann, atol=1e-5)


class Acts:
    def __init__(self):
        self.out = {}

    def on_spikes(self, layer, spikes, v, threshold):
        self.out[layer.name] = (spikes, v, threshold)

    def on_synapses(self, *a):
        pass


def test_converted_network():
    torch.manual_seed(0)
    cfg = ModelConfig(base_channels=8, channel_mult=(1, 2), time_embed_dim=16, neuron="qann", bits=3)
    qann = SpikingUNet(cfg).eval()
    torch.nn.init.normal_(qann.out.conv.weight, std=0.1)
    for _, m in qann.activations():
        m.alpha.data.fill_(1.5)
    snn = convert(qann)
    assert snn.cfg.neuron == "if" and snn.cfg.T == 7 and snn.cfg.reset == "subtract"
    assert snn.layer_names() == qann.layer_names()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 600])
    # the QANN's activations, layer by layer
    q_out = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: q_out.__setitem__(n, (i[0], o)))
             for n, m in qann.activations()]
    with torch.no_grad():
        y_ann = qann(x, t)
        rec = Acts()
        y_snn = snn(x, t, monitor=rec)
    for h in hooks:
        h.remove()
    first = snn.layer_names()[0]
    spikes, v, thr = rec.out[first]
    # the first spiking layer sees a constant input: counts equal the quantised ANN exactly (off ties)
    q_in, q_act = (a[0] for a in q_out[first])
    rate = spikes.mean(0) * thr
    ties = torch.abs((q_in / thr * 7) % 1 - 0.5) < 1e-3
    assert torch.allclose(rate[~ties], q_act[~ties], atol=1e-4)
    # deeper layers see inputs that vary over T: their error is the residual membrane left after T steps
    # the network output: the stated tolerance for this random 3-bit model
    rel = ((y_snn - y_ann).norm() / y_ann.norm()).item()
    corr = np.corrcoef(y_snn.flatten().numpy(), y_ann.flatten().numpy())[0, 1]
    print(f'relative error {rel:.3f}, correlation {corr:.4f}')
    assert rel < 0.35 and corr > 0.93, (rel, corr)


def _quantised(x, alpha, L):
    return alpha * torch.round(torch.clamp(x / alpha, 0, 1) * L) / L


@pytest.mark.parametrize("bits", [2, 3])
def test_every_converted_layer_counts_its_quantised_activation_within_its_residual(bits):
    """Layer by layer, on fixed inputs: the spike count N over T equals T x the quantised clip-ReLU activation of
    the layer's mean input current / alpha, exactly wherever the residual membrane left after T steps lies in
    [0, alpha) and the mean input lies in [0, alpha]; elsewhere it differs by less than that residual's excess
    (in units of alpha) plus the clamp excess plus 1. The identity behind it, for IF neurons with reset by
    subtraction and U[-1] = alpha/2: N alpha = T mean(I) + alpha/2 - U_res."""
    torch.manual_seed(1)
    L = 2 ** bits - 1
    cfg = ModelConfig(base_channels=8, channel_mult=(1, 2), time_embed_dim=16, neuron="qann", bits=bits)
    qann = SpikingUNet(cfg).eval()
    torch.nn.init.normal_(qann.out.conv.weight, std=0.1)
    for i, (_, m) in enumerate(qann.activations()):
        m.alpha.data.fill_(1.0 + 0.1 * i)
    snn = convert(qann)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([5, 300, 900])
    rec = Acts()
    with torch.no_grad():
        snn(x, t, monitor=rec)
    assert set(rec.out) == set(snn.layer_names())
    exact_share = []
    for name in snn.layer_names():
        spikes, hist, alpha = rec.out[name]
        T = spikes.shape[0]
        assert T == L
        # recover the input current of every step from the membrane history: hist[n] = hist[n-1] - S[n-1] alpha + I[n]
        prev = torch.cat([torch.full_like(hist[:1], 0.5 * alpha), hist[:-1] - spikes[:-1] * alpha])
        current = hist - prev
        mean_in = current.mean(0)
        residual = hist[-1] - spikes[-1] * alpha
        count = spikes.sum(0)
        torch.testing.assert_close(count * alpha, T * mean_in + 0.5 * alpha - residual, atol=2e-4, rtol=1e-5)
        want = _quantised(mean_in, alpha, L) * T / alpha
        regular = (residual >= 0) & (residual < alpha) & (mean_in >= 0) & (mean_in <= alpha)
        ties = torch.abs((mean_in * T / alpha) % 1 - 0.5) < 1e-3
        assert torch.equal(count[regular & ~ties], want[regular & ~ties].round()), name
        excess = (residual - residual.clamp(0, alpha)).abs() / alpha
        clamp_excess = (mean_in - mean_in.clamp(0, alpha)).abs() * T / alpha
        assert ((count - want).abs() <= excess + clamp_excess + 1 + 1e-3).all(), name
        exact_share.append((count == want.round())[~ties].float().mean().item())
    print('share of neurons counting exactly, per layer:', [round(v, 2) for v in exact_share])
    # the first layer sees a constant input: every neuron (off rounding ties) counts exactly
    assert exact_share[0] == 1.0
    assert min(exact_share) > 0.9, exact_share  # measured: 0.96-1.0


def test_convert_refuses_non_quantised():
    with pytest.raises(ValueError, match="qann"):
        convert(SpikingUNet(ModelConfig(base_channels=8, channel_mult=(1, 2), time_embed_dim=16)))


def _tiny_qann(size, bits=2):
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=size, base_channels=8, channel_mult=(1, 2), time_embed_dim=16, neuron="qann",
                      bits=bits)
    qann = SpikingUNet(cfg).eval()
    torch.nn.init.normal_(qann.out.conv.weight, std=0.1)
    for _, m in qann.activations():
        m.alpha.data.fill_(1.2)
    return qann


def test_layerwise_loss_compares_each_layer_rate_with_the_quantised_activation():
    from sdm.convert import layerwise_loss
    from sdm.data import load_dataset

    data = load_dataset("digits", "train")
    qann = _tiny_qann(data.image_size)
    snn = convert(qann)
    x, t = data.images[:8], torch.tensor([0, 100, 200, 300, 400, 500, 600, 700])
    loss, parts = layerwise_loss(snn, qann, x, t)
    assert loss.requires_grad and parts["layers"] > 0 and parts["output"] > 0
    # the same network on both sides: nothing to fit
    twin = convert(qann)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0)  # a dead SNN: no spikes, so the layer term is the mean square of the QANN's activations
        _, dead = layerwise_loss(twin, qann, x, t)
    assert dead["layers"] > parts["layers"]
    loss.backward()
    grads = [p.grad for p in snn.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_layerwise_finetune_updates_the_snn_only_and_reports_its_losses():
    """The fine-tune is optional; on this random tiny model, whose conversion is already almost exact, it has
    nothing to gain (its measured effect on the shipped models is in their cards)."""
    from sdm import DiffusionConfig
    from sdm.convert import finetune
    from sdm.data import load_dataset

    data = load_dataset("digits", "train")
    qann = _tiny_qann(data.image_size)
    snn = convert(qann)
    frozen = {k: v.clone() for k, v in qann.state_dict().items()}
    start = {k: v.clone() for k, v in snn.state_dict().items()}
    ft = finetune(snn, qann, data, DiffusionConfig(), steps=5, batch_size=8, lr=1e-3, progress=False)
    assert set(ft["held_out_loss_before"]) == set(ft["held_out_loss_after"]) == {"layers", "output"}
    assert ft["steps"] == 5 and not snn.training
    assert all(torch.equal(v, qann.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, snn.state_dict()[k]) for k, v in start.items())


def test_convert_cli_writes_a_loadable_if_checkpoint_with_the_finetune_in_its_card(tmp_path):
    import json

    from sdm import DiffusionConfig, load_pipeline
    from sdm.checkpoints import save_checkpoint
    from sdm.convert import main as convert_main
    from sdm.data import load_dataset

    size = load_dataset("digits", "train").image_size
    save_checkpoint(tmp_path / "q", _tiny_qann(size), DiffusionConfig(), {"name": "q", "model": {"dataset": "digits"}})
    assert convert_main(["--checkpoint", str(tmp_path / "q"), "--out", str(tmp_path / "s"), "--finetune", "3",
                         "--batch-size", "8", "--no-progress"]) == 0
    card = json.loads((tmp_path / "s" / "card.json").read_text())
    assert card["conversion"]["T"] == 3 and card["conversion"]["finetune"]["steps"] == 3
    assert card["conversion"]["finetune"]["data"] == "digits"
    pipe = load_pipeline(tmp_path / "s")
    assert pipe.config.neuron == "if" and pipe.config.time_steps == 3 and not pipe.tsm_weights()
    assert convert_main(["--checkpoint", str(tmp_path / "q"), "--out", str(tmp_path / "x"), "--finetune", "-1"]) == 2
