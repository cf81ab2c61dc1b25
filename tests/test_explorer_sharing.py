"""sdm.explorer.sharing: one recorded trajectory serves every session with the same settings (bitwise a solo run),
the images generated at 1.0 and at the slider's scale from the same noise (streamed, then final_difference), and the
lesson presets computed ahead. On the tiny fixtures."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import FIXTURES
from test_explorer_results import drain             # (its ticks, its return value)
from sdm.explorer import ModelRegistry, Session, compare, display, panels
from sdm.explorer.presets import lesson_presets
from sdm.explorer.results import SharedResults, final_difference
from sdm.explorer.sharing import (final_key, generated_images, preset_keys, preset_models, compute_key, preview,
                                  run_to_end, shared_trajectory, trajectory_key)

STEPS = 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry(FIXTURES)


def started(registry, seed=0, scale=1.0, steps=STEPS, grid=1) -> Session:
    sess = Session()
    sess.start(registry.get("tiny-sdm"), "tiny-sdm", seed=seed, num_steps=steps, grid=grid, threshold_scale=scale)
    return sess


def solo(registry, **kw) -> Session:
    sess = started(registry, **kw)
    while not sess.is_done:
        sess.advance(1, kw.get("scale", 1.0))
    return sess


def assert_same_recording(a: Session, b: Session) -> None:
    assert len(a.records) == len(b.records) == a.settings.num_steps
    for ra, rb in zip(a.records, b.records):
        assert (ra.index, ra.timestep, ra.scale) == (rb.index, rb.timestep, rb.scale)
        for x, y in ((ra.x_t, rb.x_t), (ra.x0, rb.x0), (ra.eps, rb.eps)):
            assert np.array_equal(x, y)
        assert ra.spikes.keys() == rb.spikes.keys()
        for k in ra.spikes:
            assert np.array_equal(ra.spikes[k], rb.spikes[k]) and np.array_equal(ra.v[k], rb.v[k])
        assert ra.rates == rb.rates and (ra.sops, ra.energy_mj, ra.ann_mj) == (rb.sops, rb.energy_mj, rb.ann_mj)
    assert np.array_equal(a.x, b.x)
    for k in a.neuron_index:
        assert np.array_equal(a.neuron_index[k], b.neuron_index[k])
    ia, ib = display.info(a), display.info(b)
    for k in ("sample_digest", "x0_digest", "firing_rates", "energy", "steps_done", "done"):
        assert ia[k] == ib[k], k


def run_class(student, args, timeout: float = 60) -> None:
    """``student(arg)`` for each of ``args``, each in its own thread, all at once; fails on any student's error."""
    errors = []

    def guarded(arg):
        try:
            student(arg)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors


def test_the_signature_is_recorded_when_the_checkpoint_loads(registry):
    sig = registry.signature("tiny-sdm")
    assert [f for f, _, _ in sig] and all(size for _, size, _ in sig)
    assert registry.signature("tiny-sdm") is sig
    with pytest.raises(ValueError, match="not found"):
        registry.signature("no-such-model")


def test_a_shared_trajectory_is_bitwise_what_a_solo_run_records(registry):
    results, sig = SharedResults(64 * 2 ** 20), registry.signature("tiny-sdm")
    ref = solo(registry, seed=3, scale=1.05)
    first, second = started(registry, seed=3, scale=1.05), started(registry, seed=3, scale=1.05)
    second.advance(2, 1.05)                        # a student who stepped a little first
    drain(run_to_end(first, results, sig, 1.05))
    assert results.stats()["computes"] >= 1 and len(results) >= 1
    computes = results.stats()["computes"]
    ticks, taken = drain(run_to_end(second, results, sig, 1.05))
    assert results.stats()["computes"] == computes        # served from the cache, nothing computed
    assert taken == STEPS - 3 and second.is_done
    assert second.records[4] is first.records[4]           # one recording, shared read-only
    assert not second.records[4].x0.flags.writeable
    assert_same_recording(first, ref)
    assert_same_recording(second, ref)
    # a shared recording stays usable: scrub back, preview, continue from there
    second.scrub(4)
    second.preview(0.95)
    second.continue_from_view(0.95)
    assert len(second.records) == 4 and not second.pure and first.num_recorded == STEPS
    assert np.array_equal(first.records[3].x_t, ref.records[3].x_t)


def test_a_trajectory_run_at_several_scales_is_not_shared(registry):
    results, sig = SharedResults(64 * 2 ** 20), registry.signature("tiny-sdm")
    sess = started(registry, seed=4)
    sess.advance(2, 1.05)                          # steps at 1.0 then 1.05: not a pure function of one scale
    drain(run_to_end(sess, results, sig, 1.05))
    assert sess.is_done and not any(k.kind == "trajectory" for k in results._entries)


def test_one_computation_serves_n_sessions_at_once(registry):
    results, sig = SharedResults(64 * 2 ** 20), registry.signature("tiny-sdm")
    ref = solo(registry, seed=7, steps=24)
    n = 6
    sessions = [started(registry, seed=7, steps=24) for _ in range(n)]
    go = threading.Barrier(n)

    def student(sess):
        go.wait()
        drain(run_to_end(sess, results, sig, 1.0))

    run_class(student, sessions)
    stats = results.stats()
    assert stats["computes"] == 1 and stats["hits"] + stats["joins"] == n - 1
    for s in sessions:
        assert_same_recording(s, ref)


def test_a_class_on_its_own_seeds_is_batched_and_each_sees_its_solo_run(registry):
    # Run to end (recorded), then the slider's image at 1.05 and its preview, for 5 students on their own seeds at
    # once through one DenoiserBatcher: every recording and image bitwise what the student computes alone
    from sdm.explorer import DenoiserBatcher
    seeds = [31, 32, 33, 34, 35]
    refs = {}
    for seed in seeds:
        ref = solo(registry, seed=seed)
        _, g = drain(generated_images(ref, SharedResults(64 * 2 ** 20), registry.signature("tiny-sdm"), 1.05))
        ref.scrub(3)
        refs[seed] = (ref, g.image, ref.preview(0.95))
    results, sig, batcher = SharedResults(64 * 2 ** 20), registry.signature("tiny-sdm"), DenoiserBatcher(workers=1)
    sessions = {seed: started(registry, seed=seed) for seed in seeds}
    go, images, previews = threading.Barrier(len(seeds)), {}, {}

    def student(seed):
        sess = sessions[seed]
        go.wait()
        drain(run_to_end(sess, results, sig, 1.0, batcher))
        _, g = drain(generated_images(sess, results, sig, 1.05, batcher))
        images[seed] = g.image
        sess.scrub(3)
        previews[seed] = preview(sess, results, registry.signature, 0.95, batcher)

    run_class(student, seeds, timeout=120)
    for seed in seeds:
        ref, image, prev = refs[seed]
        assert_same_recording(sessions[seed], ref)
        assert np.array_equal(images[seed], image)
        assert np.array_equal(previews[seed].x0, prev.x0) and previews[seed].spikes.keys() == prev.spikes.keys()
        assert all(np.array_equal(previews[seed].spikes[k], prev.spikes[k]) for k in prev.spikes)
    assert batcher.stats["batched_calls"] > len(seeds), batcher.stats     # it batched, not only checked


def test_the_generated_images_at_s_and_at_1(registry):
    results, sig = SharedResults(64 * 2 ** 20), registry.signature("tiny-sdm")
    sess = started(registry, seed=2)
    assert sess.generated_now() is None and display.info(sess)["final_difference"] is None
    drain(run_to_end(sess, results, sig, 1.0))
    g = sess.generated_now()
    assert g is not None and g.base is sess.x and g.final_difference == 0.0      # its own image at 1.0
    ticks, g = drain(generated_images(sess, results, sig, 1.05))
    assert len(ticks) == STEPS and g.done and g.scale == 1.05
    scaled, _ = compare.final_image(sess, 1.05)
    assert np.array_equal(g.image, scaled)                     # bitwise the Compare tab's image at 1.05
    assert display.info(sess)["final_difference"] == pytest.approx(final_difference(scaled, sess.x))
    assert 0 < display.info(sess)["final_difference"] < 1
    assert panels.trio_caption(sess).startswith("**Generated images from the same noise: s = 1.000 vs s = 1.050**")
    # again, and from another session with the same settings: from the cache
    computes = results.stats()["computes"]
    other = started(registry, seed=2)
    drain(run_to_end(other, results, sig, 1.0))
    ticks, g2 = drain(generated_images(other, results, sig, 1.05))
    assert not ticks and np.array_equal(g2.image, g.image) and results.stats()["computes"] == computes
    # a new trajectory: nothing generated yet
    sess.start(registry.get("tiny-sdm"), "tiny-sdm", seed=2, num_steps=STEPS)
    assert sess.generated_now() is None and display.info(sess)["final_difference"] is None
    assert panels.trio_caption(sess).startswith("**Step 1 preview")


def test_the_image_at_s_streams_from_the_first_step(registry):
    results, sig = SharedResults(64 * 2 ** 20), registry.signature("tiny-sdm")
    sess = started(registry, seed=5)
    sess.show_generated = True                      # asked for mid-run: the base at 1.0 is computed too
    seen = []
    gen = generated_images(sess, results, sig, 0.95)
    for k, n in gen:
        g = sess.generated_now()
        seen.append(None if g is None else (g.scale, g.steps_done, g.final_difference))
    g = sess.generated_now()
    assert g.done and g.scale == 0.95 and g.final_difference is not None
    partial = [s for s in seen if s is not None]
    assert len(partial) >= STEPS - 1                # a picture after every step of the run at s ...
    assert all(s[0] == 0.95 and s[2] is None for s in partial)    # ... with no final_difference until the end
    assert [s[1] for s in partial] == sorted(s[1] for s in partial)
    base, _ = compare.final_image(sess, 1.0)
    assert np.array_equal(g.base, base)


def test_a_new_trajectory_takes_its_first_step_from_a_stored_one_and_goes_on_bitwise_as_alone(registry, monkeypatch):
    results, sig = SharedResults(64 * 2 ** 20), registry.signature("tiny-sdm")
    first = started(registry, seed=4)
    drain(run_to_end(first, results, sig, 1.0))                 # stores the whole trajectory
    pipe = registry.get("tiny-sdm")
    calls = []
    real = pipe.run_steps
    monkeypatch.setattr(pipe, "run_steps", lambda *a, **k: calls.append(1) or real(*a, **k))
    sess = Session()
    sess.start(pipe, "tiny-sdm", seed=4, num_steps=STEPS, shared=shared_trajectory(results, registry.signature))
    assert calls == [] and sess.records[0] is first.records[0] and sess.num_recorded == 1
    while not sess.is_done:                                     # then it steps on its own, from that step's output
        sess.advance(1, 1.0)
    assert len(calls) == STEPS - 1
    assert_same_recording(sess, solo(registry, seed=4))
    # nothing stored for other settings: computed as before
    calls.clear()
    other = Session()
    other.start(pipe, "tiny-sdm", seed=5, num_steps=STEPS, shared=shared_trajectory(results, registry.signature))
    assert len(calls) == 1 and other.num_recorded == 1


def test_the_slider_preview_is_computed_once_for_the_class_and_is_what_a_solo_run_gives(registry):
    """30 students on one lesson move the slider to 1.05 on the same step: the step is re-run once (the preview is
    shared, read-only), and each sees bitwise what its own re-run gives; another step, scale or a session whose
    steps ran at several scales computes its own."""
    results = SharedResults(64 * 2 ** 20)
    class_ = [started(registry, seed=3) for _ in range(3)]
    for sess in class_:
        sess.advance(2, 1.0)
    firsts = [preview(sess, results, registry.signature, 1.05) for sess in class_]
    assert results.stats()["computes"] == 1 and all(p is firsts[0] for p in firsts)
    assert all(sess.preview_data is firsts[0] for sess in class_)
    alone = started(registry, seed=3)
    alone.advance(2, 1.0)
    own = alone.preview(1.05)                                   # not shared: its own re-run
    for k in ("x0", "eps"):
        assert np.array_equal(getattr(own, k), getattr(firsts[0], k))
        assert not getattr(firsts[0], k).flags.writeable
    assert own.spikes.keys() == firsts[0].spikes.keys()
    assert all(np.array_equal(own.spikes[n], firsts[0].spikes[n]) for n in own.spikes)
    assert preview(class_[0], results, registry.signature, 1.0) is None       # the recorded scale: no preview
    preview(class_[0], results, registry.signature, 0.95)                   # another scale: computed
    class_[1].scrub(2)
    preview(class_[1], results, registry.signature, 1.05)                   # another step: computed
    assert results.stats()["computes"] == 3
    mixed = started(registry, seed=3)
    mixed.advance(1, 0.97)                                                  # steps at two scales: not shared
    preview(mixed, results, registry.signature, 1.05)
    assert results.stats()["computes"] == 3 and mixed.preview_data.x0.flags.writeable


def test_the_lesson_presets_are_computed_ahead_and_the_warming_stops(registry):
    results = SharedResults(64 * 2 ** 20)
    presets = [p for p in lesson_presets(registry, "tiny-sdm") if p[1][0] == "tiny-sdm" and p[1][5] == 1
               and p[1][3] <= 50][:2]
    keys = preset_keys(registry, presets, scales=(1.05,))
    assert [k.kind for k in keys] == ["trajectory", "final", "trajectory"]
    # niceness 0: this test waits for the result, and at nice 19 beside the other pytest worker it starved (120 s)
    w = results.warm(keys, lambda key: compute_key(registry, key), niceness=0)
    w.join(120)
    assert not w.is_alive() and w.error is None and w.done == keys
    # a student on the first lesson: Run to end and the slider at 1.05 compute nothing
    _, (checkpoint, seed, sampler, steps, scale, grid, T) = presets[0]
    sess = Session()
    sess.start(registry.get(checkpoint), checkpoint, seed=seed, sampler=sampler, num_steps=steps, grid=grid,
               threshold_scale=scale, time_steps=T)
    computes = results.stats()["computes"]
    sig = registry.signature(checkpoint)
    drain(run_to_end(sess, results, sig, scale))
    _, g = drain(generated_images(sess, results, sig, 1.05))
    assert results.stats()["computes"] == computes and g.done
    assert trajectory_key(sess.settings, sess.pipe, sig, scale) in results
    assert final_key(sess.settings, sess.pipe, sig, 1.05) in results
    # a warming asked to stop ends between two steps
    slow = results.warm([trajectory_key(sess.settings, sess.pipe, sig, 0.91)],
                        lambda key: compute_key(registry, key), pause_while=lambda: True)
    slow.stop(timeout=10)
    assert not slow.is_alive() and not slow.done


def test_requests_in_flight_are_counted_while_they_run():
    from sdm.explorer.sharing import InFlight
    import inspect

    flight = InFlight()
    seen = []

    def plain(a, request=None):
        seen.append(flight.count)
        return a

    def streaming(a, request=None):
        seen.append(flight.count)
        yield a
        seen.append(flight.count)

    p, g = flight.counted(plain), flight.counted(streaming)
    assert inspect.signature(p) == inspect.signature(plain) and inspect.isgeneratorfunction(g)
    assert p(1) == 1 and not flight.busy()
    it = g(2)
    assert next(it) == 2 and flight.busy()
    it.close()                                      # a cancelled stream stops counting too
    assert not flight.busy() and seen == [1, 1]


def test_preset_models_are_the_distinct_spiking_checkpoints_and_T_of_the_lessons(registry):
    presets = [("a", ["tiny-sdm", 0, "ddim", 8, 1.0, 1, None]), ("b", ["tiny-sdm", 3, "ddpm", 20, 1.05, 4, None]),
               ("c", ["tiny-sdm", 0, "ddim", 8, 1.0, 1, 8]), ("d", ["tiny-ann", 0, "ddim", 8, 1.0, 1, None]),
               ("e", ["no-such-checkpoint", 0, "ddim", 8, 1.0, 1, None])]
    got = preset_models(registry, presets)
    pipe = registry.get("tiny-sdm")
    assert [(p is pipe, T) for p, T in got] == [(True, pipe.config.time_steps), (True, 8)]
