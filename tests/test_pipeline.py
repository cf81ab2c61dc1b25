import numpy as np
import pytest
import torch

import sdm


def test_list_and_unknown_checkpoint_names_the_available_ones(fixtures_dir):
    names = sdm.list_checkpoints(fixtures_dir)
    assert {"tiny-sdm", "tiny-ann", "tiny-sdm-vanilla"} <= set(names)
    with pytest.raises(FileNotFoundError) as e:
        sdm.load_pipeline("no-such-model", fixtures_dir)
    assert "no-such-model" in str(e.value) and "tiny-sdm" in str(e.value)


def test_load_by_folder_path(fixtures_dir):
    pipe = sdm.load_pipeline(fixtures_dir / "tiny-ann")
    assert pipe.config.neuron == "ann" and pipe.tsm_weights() == {}


def test_steps_contract(tiny_pipe):
    outs = list(tiny_pipe.steps(seed=0, num_inference_steps=5, sampler="ddim", batch_size=2, record=True))
    assert [o.index for o in outs] == list(range(5))
    assert [o.timestep for o in outs] == [800, 600, 400, 200, 0]
    for prev, o in zip(outs, outs[1:]):
        assert torch.equal(o.model_input, prev.sample)
    o = outs[-1]
    for t in (o.sample, o.pred_original_sample, o.pred_noise, o.model_input):
        assert t.shape == (2, 1, 28, 28)
    assert set(o.probes) == set(tiny_pipe.layer_names()) and o.is_last


def test_same_seed_bitwise_identical_other_seed_differs(tiny_pipe):
    a = tiny_pipe.sample(n=3, seed=5, num_inference_steps=4, sampler="ddpm")
    b = tiny_pipe.sample(n=3, seed=5, num_inference_steps=4, sampler="ddpm")
    c = tiny_pipe.sample(n=3, seed=6, num_inference_steps=4, sampler="ddpm")
    assert a.shape == (3, 1, 28, 28) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_image_does_not_depend_on_batch(tiny_pipe):
    # x_T and the step noise of image i come from (seed, i) alone: bitwise the same in any batch
    assert torch.equal(tiny_pipe.initial_noise(1, 4)[2], tiny_pipe.initial_noise(1, 1, offset=2)[0])
    four = tiny_pipe.sample(n=4, seed=1, num_inference_steps=4, sampler="ddpm")
    one = tiny_pipe.sample(n=1, seed=1, num_inference_steps=4, sampler="ddpm")
    chunked = tiny_pipe.sample(n=4, seed=1, num_inference_steps=4, sampler="ddpm", batch_size=3)
    # convolutions may round differently per batch size, which can flip a spike: compare loosely
    assert np.abs(four[0] - one[0]).mean() < 0.02
    assert np.abs(four - chunked).mean() < 0.02
    other = tiny_pipe.sample(n=1, seed=2, num_inference_steps=4, sampler="ddpm")
    assert np.abs(other[0] - one[0]).mean() > 0.05


def test_resume_from_the_middle_equals_one_run(tiny_pipe):
    full = list(tiny_pipe.steps(seed=2, num_inference_steps=6, sampler="ddpm"))
    resumed = list(tiny_pipe.steps(seed=2, num_inference_steps=6, sampler="ddpm", sample=full[2].sample, start_index=3))
    assert [o.index for o in resumed] == [3, 4, 5]
    assert torch.equal(resumed[-1].sample, full[-1].sample)


def test_threshold_scale_changes_the_trajectory(tiny_pipe):
    a = tiny_pipe.sample(n=1, seed=0, num_inference_steps=3, threshold_scale=1.0)
    b = tiny_pipe.sample(n=1, seed=0, num_inference_steps=3, threshold_scale=0.95)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=10 ** 9), "num_inference_steps"),
    (dict(sampler="euler"), "sampler"),
    (dict(threshold_scale=float("nan")), "threshold_scale"),
    (dict(batch_size=0), "batch_size"),
    (dict(seed=-1), "seed"),
    (dict(start_index=2), "resume"),
])
def test_bad_arguments(tiny_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(tiny_pipe.steps(**kwargs))


def test_tsm_weights_and_layer_names(tiny_pipe):
    w = tiny_pipe.tsm_weights()
    assert list(w) == tiny_pipe.layer_names()
    assert all(v.shape == (tiny_pipe.config.T,) for v in w.values())


def test_energy_report_is_consistent(tiny_pipe):
    rep = tiny_pipe.energy(seed=0, num_inference_steps=3)
    assert rep.calls == 3 and rep.total_sops > 0
    assert rep.energy_mj == pytest.approx((0.9 * rep.total_sops + 4.6 * rep.snn_macs) * 1e-9)
    assert rep.ann_energy_mj == pytest.approx(4.6 * rep.ann_macs * 1e-9)
    assert set(rep.per_layer) == set(tiny_pipe.layer_names())
    assert 0 < rep.mean_firing_rate < 1


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.7)])
def test_a_batch_gives_exactly_the_images_sampled_one_by_one(fixtures_dir, monkeypatch, sampler, eta):
    # a denoiser that treats every image alike and alone, so that any difference comes from the noise
    pipe = sdm.load_pipeline("tiny-sdm", fixtures_dir)
    monkeypatch.setattr(pipe, "run_denoiser", lambda x, t, scale, T, **kw: (0.3 * x + t * 1e-4, {}))
    kw = dict(seed=4, num_inference_steps=5, sampler=sampler, eta=eta)
    four = pipe.sample(n=4, **kw)
    one_by_one = np.concatenate([pipe.sample(n=1, **kw)] + [
        sdm.pipeline.to_unit(list(pipe.steps(image_offset=i, **kw))[-1].sample) for i in range(1, 4)])
    assert np.array_equal(four, one_by_one)
    assert np.array_equal(pipe.sample(n=4, batch_size=3, **kw), four)
    assert not np.array_equal(four[0], four[1])


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.7)])
def test_one_batched_step_equals_a_step_per_image_with_its_own_generator(tiny_pipe, sampler, eta):
    """steps() hands the scheduler the noise of all images at once (variance_noise); that is bit for bit what
    stepping image j alone with its generator (seed, image_offset + j, step) gives."""
    sched = tiny_pipe.make_scheduler(sampler, 4, eta)
    for o in tiny_pipe.steps(seed=6, num_inference_steps=4, sampler=sampler, eta=eta, batch_size=3, image_offset=2):
        per_image = torch.cat([
            sched.step(o.pred_noise[j:j + 1], o.timestep, o.model_input[j:j + 1],
                       generator=tiny_pipe.step_noise_generator(6, o.index, 2 + j)).prev_sample for j in range(3)])
        assert torch.equal(o.sample, per_image)


def test_threshold_scale_is_checked_once_per_call(tiny_pipe, monkeypatch):
    calls = []
    real = sdm.pipeline.check_threshold_scale
    monkeypatch.setattr(sdm.pipeline, "check_threshold_scale", lambda s: calls.append(s) or real(s))
    list(tiny_pipe.steps(seed=0, num_inference_steps=4, threshold_scale=0.98))
    assert calls == [0.98]
    tiny_pipe.sample(n=3, seed=0, num_inference_steps=2, batch_size=2, threshold_scale=0.97)
    assert calls == [0.98, 0.97]
    tiny_pipe.energy(seed=0, num_inference_steps=2, threshold_scale=0.96)
    tiny_pipe.denoise(tiny_pipe.initial_noise(0), 500, threshold_scale=0.95)
    assert calls == [0.98, 0.97, 0.96, 0.95]
    for bad in (0.0, float("inf"), "x"):
        with pytest.raises(ValueError, match="threshold_scale"):
            tiny_pipe.sample(n=1, num_inference_steps=1, threshold_scale=bad)
        with pytest.raises(ValueError, match="threshold_scale"):
            tiny_pipe.denoise(tiny_pipe.initial_noise(0), 500, threshold_scale=bad)


def test_time_steps_override_at_the_pipeline(tiny_pipe):
    L = tiny_pipe.layer_names()[0]
    ref = list(tiny_pipe.steps(seed=0, num_inference_steps=3, record=True))
    same = list(tiny_pipe.steps(seed=0, num_inference_steps=3, record=True, time_steps=tiny_pipe.config.T))
    eight = list(tiny_pipe.steps(seed=0, num_inference_steps=3, record=True, time_steps=8))
    # the trained T gives bitwise the run without an override
    assert torch.equal(same[-1].sample, ref[-1].sample)
    assert all(np.array_equal(a.probes[n].spikes, b.probes[n].spikes) for a, b in zip(ref, same) for n in a.probes)
    # T = 8: the probes hold 8 spiking steps, the spikes and the image change
    assert ref[0].probes[L].spikes.shape[0] == 4 and eight[0].probes[L].spikes.shape[0] == 8
    assert eight[0].probes[L].v.shape[0] == 8 and eight[0].time_steps == 8 and ref[0].time_steps == 4
    assert not torch.equal(eight[-1].sample, ref[-1].sample)
    eps8, frames = tiny_pipe.denoise(ref[0].model_input, ref[0].timestep, record=True, time_steps=8)
    assert torch.equal(eps8, eight[0].pred_noise) and frames[L].spikes.shape[0] == 8
    assert tiny_pipe.sample(n=1, seed=0, num_inference_steps=3, time_steps=8).shape == (1, 1, 28, 28)
    # TSM weights at a T: the rule, beyond the trained T the last learned weight repeats
    w4, w8 = tiny_pipe.tsm_weights()[L], tiny_pipe.tsm_weights(8)[L]
    assert w8.shape == (8,) and np.array_equal(w8[:4], w4) and (w8[4:] == w4[-1]).all()
    for bad in (0, 65, 2.5, "8"):
        with pytest.raises(ValueError, match="time_steps"):
            list(tiny_pipe.steps(num_inference_steps=2, time_steps=bad))


def test_energy_counts_the_spiking_steps_run(tiny_pipe):
    from sdm.energy import analog_macs
    four = tiny_pipe.energy(seed=0, num_inference_steps=3)
    same = tiny_pipe.energy(seed=0, num_inference_steps=3, time_steps=4)
    eight = tiny_pipe.energy(seed=0, num_inference_steps=3, time_steps=8)
    one = tiny_pipe.energy(seed=0, num_inference_steps=3, time_steps=1)
    assert same.total_sops == four.total_sops and same.energy_mj == four.energy_mj
    cfg = tiny_pipe.config
    assert eight.snn_macs == 3 * analog_macs(cfg.replace(T=8)) > four.snn_macs == 3 * analog_macs(cfg)
    assert one.total_sops < four.total_sops < eight.total_sops
    assert eight.energy_mj > four.energy_mj > one.energy_mj
    assert eight.ann_macs == four.ann_macs                                # the ANN has no spiking steps
