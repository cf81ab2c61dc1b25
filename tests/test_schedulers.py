import math

import pytest
import torch

from sdm import DDIMScheduler, DDPMScheduler, DiffusionConfig

CFG = DiffusionConfig(num_train_timesteps=10, beta_start=0.1, beta_end=0.2, clip_sample=False)


def abar(t):
    """alpha-bar by hand: prod_{i<=t} (1 - beta_i), betas linear from 0.1 to 0.2 over 10 steps."""
    out = 1.0
    for i in range(t + 1):
        out *= 1 - (0.1 + (0.2 - 0.1) * i / 9)
    return out


def test_timesteps_are_spaced_and_descending():
    s = DDIMScheduler(CFG)
    s.set_timesteps(5)
    assert s.timesteps.tolist() == [8, 6, 4, 2, 0]
    assert s.previous_timestep(8) == 6 and s.previous_timestep(0) == -1


def test_step_before_set_timesteps_raises():
    for cls in (DDPMScheduler, DDIMScheduler):
        with pytest.raises(ValueError, match="set_timesteps"):
            cls(CFG).step(torch.zeros(1), 5, torch.zeros(1))


@pytest.mark.parametrize("n", [0, -3, 11, 2.5, "10"])
def test_bad_step_counts(n):
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDPMScheduler(CFG).set_timesteps(n)


def test_ddim_step_by_hand():
    s = DDIMScheduler(CFG, eta=0.0)
    s.set_timesteps(5)
    x, eps = torch.tensor([0.5]), torch.tensor([0.2])
    out = s.step(eps, 6, x)
    a_t, a_p = abar(6), abar(4)
    x0 = (0.5 - math.sqrt(1 - a_t) * 0.2) / math.sqrt(a_t)
    prev = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * 0.2
    assert out.pred_original_sample.item() == pytest.approx(x0, rel=1e-6)
    assert out.prev_sample.item() == pytest.approx(prev, rel=1e-6)
    # last step goes to abar = 1: prev = x0
    assert s.step(eps, 0, x).prev_sample.item() == pytest.approx((0.5 - math.sqrt(1 - abar(0)) * 0.2) / math.sqrt(abar(0)), rel=1e-6)


def test_ddim_eta_adds_the_right_noise():
    s = DDIMScheduler(CFG, eta=1.0)
    s.set_timesteps(5)
    x, eps = torch.tensor([0.5]), torch.tensor([0.2])
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, generator=torch.Generator().manual_seed(3)).item()
    out = s.step(eps, 6, x, generator=g)
    a_t, a_p = abar(6), abar(4)
    sigma = math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    x0 = (0.5 - math.sqrt(1 - a_t) * 0.2) / math.sqrt(a_t)
    prev = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma ** 2) * 0.2 + sigma * z
    assert out.prev_sample.item() == pytest.approx(prev, rel=1e-5)


def test_ddpm_step_by_hand():
    s = DDPMScheduler(CFG)
    s.set_timesteps(10)
    x, eps = torch.tensor([0.5]), torch.tensor([0.2])
    z = torch.randn(1, generator=torch.Generator().manual_seed(7)).item()
    out = s.step(eps, 5, x, generator=torch.Generator().manual_seed(7))
    a_t, a_p = abar(5), abar(4)
    beta_t = 0.1 + 0.1 * 5 / 9
    x0 = (0.5 - math.sqrt(1 - a_t) * 0.2) / math.sqrt(a_t)
    mean = math.sqrt(a_p) * beta_t / (1 - a_t) * x0 + math.sqrt(1 - beta_t) * (1 - a_p) / (1 - a_t) * 0.5
    var = (1 - a_p) / (1 - a_t) * beta_t
    assert out.pred_original_sample.item() == pytest.approx(x0, rel=1e-6)
    assert out.prev_sample.item() == pytest.approx(mean + math.sqrt(var) * z, rel=1e-5)
    # the final step adds no noise
    last = s.step(eps, 0, x, generator=torch.Generator().manual_seed(7))
    assert last.prev_sample.item() == pytest.approx(last.pred_original_sample.item(), rel=1e-6)


def test_clip_sample_clamps_x0():
    s = DDIMScheduler(DiffusionConfig(num_train_timesteps=10, beta_start=0.1, beta_end=0.2, clip_sample=True))
    s.set_timesteps(5)
    out = s.step(torch.tensor([-3.0]), 8, torch.tensor([2.0]))
    assert out.pred_original_sample.item() == 1.0


def test_cosine_schedule_is_valid():
    s = DDPMScheduler(DiffusionConfig(beta_schedule="cosine"))
    assert s.betas.shape == (1000,) and (s.betas > 0).all() and (s.betas <= 0.999).all()
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()


def test_default_schedule_is_linear_1e4_to_002():
    s = DDPMScheduler()
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)


def test_ddim_with_clipping_rederives_the_noise_from_the_clipped_x0():
    """With clip_sample, x0 and the direction must describe the same x_t: eps' = (x_t - sqrt(abar) x0c) / sqrt(1 - abar).
    Using the raw model output instead (as the first version did) turned the samples of our small models into
    grey blotches."""
    cfg = DiffusionConfig(num_train_timesteps=10, beta_start=0.1, beta_end=0.2, clip_sample=True)
    s = DDIMScheduler(cfg)
    s.set_timesteps(5)
    x = torch.tensor([[2.0, -0.3, 0.5]])
    eps = torch.tensor([[-1.5, 0.2, 0.1]])  # x0 of the first pixel is far above 1: clipped
    a, ap = abar(8), abar(6)
    x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
    assert x0[0, 0] == 1.0  # the case under test
    eps_c = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    out = s.step(eps, 8, x)
    torch.testing.assert_close(out.pred_original_sample, x0)
    torch.testing.assert_close(out.prev_sample, math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps_c)
    # where nothing is clipped, the step is the plain DDIM step with the model's own eps
    torch.testing.assert_close(out.prev_sample[0, 1:], (math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps)[0, 1:])


# ---------------------------------------------------------------------------------------------- variance_noise

def test_ddpm_step_uses_the_given_variance_noise_exactly():
    s = DDPMScheduler(CFG)
    s.set_timesteps(10)
    x, eps = torch.tensor([[0.5, -0.25]]), torch.tensor([[0.2, 0.1]])
    z = torch.tensor([[0.7, -1.3]])
    out = s.step(eps, 5, x, variance_noise=z)
    a_t, a_p = abar(5), abar(4)
    beta_t = 0.1 + 0.1 * 5 / 9
    var = (1 - a_p) / (1 - a_t) * beta_t
    for j, (xj, ej, zj) in enumerate(zip(x[0].tolist(), eps[0].tolist(), z[0].tolist())):
        x0 = (xj - math.sqrt(1 - a_t) * ej) / math.sqrt(a_t)
        mean = math.sqrt(a_p) * beta_t / (1 - a_t) * x0 + math.sqrt(1 - beta_t) * (1 - a_p) / (1 - a_t) * xj
        assert out.prev_sample[0, j].item() == pytest.approx(mean + math.sqrt(var) * zj, rel=1e-5)
    # the last step adds no noise, given or not
    last = s.step(eps, 0, x, variance_noise=z)
    torch.testing.assert_close(last.prev_sample, last.pred_original_sample)


def test_variance_noise_equals_the_noise_the_generator_would_draw():
    x, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    for s in (DDPMScheduler(CFG), DDIMScheduler(CFG, eta=0.5)):
        s.set_timesteps(5)
        # None keeps drawing from the generator ...
        drawn = s.step(eps, 6, x, generator=torch.Generator().manual_seed(11)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
        # ... and passing what it draws gives the very same step, bit for bit
        assert torch.equal(s.step(eps, 6, x, variance_noise=z).prev_sample, drawn)
        assert not torch.equal(s.step(eps, 6, x, variance_noise=-z).prev_sample, drawn)


def test_ddim_with_eta_0_ignores_variance_noise():
    s = DDIMScheduler(CFG, eta=0.0)
    s.set_timesteps(5)
    x, eps = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(s.step(eps, 6, x, variance_noise=torch.randn(2, 3)).prev_sample, s.step(eps, 6, x).prev_sample)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_variance_noise_errors(cls):
    s = cls(CFG)
    s.set_timesteps(5)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        s.step(x, 6, x, variance_noise=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="not both"):
        s.step(x, 6, x, generator=torch.Generator(), variance_noise=torch.zeros(2, 3))
