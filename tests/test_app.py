"""The explorer app: its handlers called directly, then the launched app driven through gradio_client.

Everything runs on the tiny random fixtures (tests/fixtures), never on the trained checkpoints.
"""
from __future__ import annotations

import os
import shutil

import gradio as gr
import numpy as np
import pytest
import torch

from conftest import FIXTURES, import_app
from sdm.export import load_npz
from sdm import imaging
from sdm.explorer import MAX_STATE_BYTES, ModelRegistry, Session, compare, display, estimate_state_bytes, panels
from sdm.explorer.presets import lesson_presets
from sdm.ui import outputs

app = import_app()
STEPS = 8
LAYER = "down.0.blocks.0.conv1.act"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def explorer():
    return app.Explorer(ModelRegistry(FIXTURES))


def view(result, keys=app.VIEW_KEYS) -> dict:
    return app.as_dict(result, keys)


def start(ex, seed=0, steps=STEPS, scale=1.0, grid=1, checkpoint="tiny-sdm", sampler="ddim"):
    return view(ex.new_trajectory(checkpoint, seed, sampler, steps, scale, grid, LAYER, "step", [], None))


def drain(result):
    """The last output of a streaming handler (a generator); a plain handler's output as it is."""
    if not hasattr(result, "__next__"):
        return result
    out = None
    for out in result:
        pass
    return out


def figure_points(fig) -> int:
    return sum(len(t.x) for t in fig.data if getattr(t, "x", None) is not None)


# ------------------------------------------------------------------------------------------- handlers

def test_new_trajectory_then_step_advances_the_index(explorer):
    v = start(explorer)
    sess = v["state"]
    assert isinstance(sess, Session)
    assert v["info"]["step"] == 1 and v["info"]["steps_done"] == 1
    assert v["info"]["timestep"] == sess.timesteps[0]
    assert "Step 1 / 8" in v["status"] and f"t = {sess.timesteps[0]}" in v["status"]

    v2 = view(drain(explorer.step(1, 1.0, LAYER, "step", [], sess)))
    assert v2["info"]["step"] == 2 and v2["info"]["timestep"] == sess.timesteps[1]
    v3 = view(drain(explorer.step(3, 1.0, LAYER, "step", [], sess)))
    assert v3["info"]["step"] == 5 and "Step 5 / 8" in v3["status"]
    assert v3["timeline"].maximum == 5 and v3["timeline"].value == 5
    # x_t changed from step to step, and the images are nearest-neighbour upscaled (pixel-crisp)
    assert not np.array_equal(v2["img_xt"], v3["img_xt"])
    img = v3["img_xt"]
    scale = img.shape[0] // 28
    assert scale >= 8 and img.shape[:2] == (28 * scale, 28 * scale) and img.dtype == np.uint8
    block = img[:scale, :scale]
    assert (block == block[0, 0]).all()
    # stepping past the end is refused with a message
    drain(explorer.run_to_end(1.0, LAYER, "step", [], sess))
    with pytest.raises(ValueError, match="finished"):
        drain(explorer.step(1, 1.0, LAYER, "step", [], sess))


def test_scrub_returns_the_recorded_step(explorer):
    v = start(explorer)
    sess = v["state"]
    at2 = view(drain(explorer.step(1, 1.0, LAYER, "step", [], sess)))
    drain(explorer.step(4, 1.0, LAYER, "step", [], sess))
    s = view(explorer.scrub(2, LAYER, "step", [], sess), app.SCRUB_KEYS)
    assert s["info"]["step"] == 2 and s["info"]["timestep"] == sess.timesteps[1]
    assert s["info"]["steps_done"] == 6
    for k in ("img_xt", "img_x0", "img_eps"):
        np.testing.assert_array_equal(s[k], at2[k])
    assert s["info"]["x0_digest"] == at2["info"]["x0_digest"]
    assert s["raster"].to_json() == at2["raster"].to_json()
    assert "Viewing an earlier step" in s["status"]
    with pytest.raises(ValueError, match="between 1 and 6"):
        explorer.scrub(7, LAYER, "step", [], sess)


def test_threshold_change_alters_x0_and_the_firing_rates(explorer):
    v = start(explorer)
    sess = v["state"]
    base = view(drain(explorer.step(2, 1.0, LAYER, "step", [], sess)))
    t = view(drain(explorer.set_threshold(1.08, LAYER, "step", [], sess)), app.THRESHOLD_KEYS)
    assert t["info"]["previewing"] and t["info"]["threshold_scale"] == pytest.approx(1.08)
    assert t["info"]["x0_digest"] != base["info"]["x0_digest"]
    assert not np.array_equal(t["img_x0"], base["img_x0"])
    assert t["info"]["firing_rates"] != base["info"]["firing_rates"]
    assert t["info"]["mean_firing_rate"] < base["info"]["mean_firing_rate"]     # higher threshold, fewer spikes
    assert t["raster"].to_json() != base["raster"].to_json()
    assert t["membrane"].to_json() != base["membrane"].to_json()
    assert "1.08" in t["traces"].to_json()                                         # the scaled threshold line
    # the trajectory itself is untouched: same step, same x_t
    assert t["info"]["step"] == 3 and t["info"]["steps_done"] == 3
    # back to the recorded scale: the recorded view again
    b = view(drain(explorer.set_threshold(1.0, LAYER, "step", [], sess)), app.THRESHOLD_KEYS)
    assert not b["info"]["previewing"] and b["info"]["x0_digest"] == base["info"]["x0_digest"]


def test_continue_from_here_equals_a_run_that_switched_scale_at_that_step(explorer):
    v = start(explorer)
    sess = v["state"]
    drain(explorer.step(4, 1.0, LAYER, "step", [], sess))
    explorer.scrub(3, LAYER, "step", [], sess)
    drain(explorer.set_threshold(1.05, LAYER, "step", [], sess))
    end = view(drain(explorer.continue_from_here(1.05, LAYER, "step", [], sess)))
    assert end["info"]["done"] and end["info"]["steps_done"] == STEPS
    assert [r.scale for r in sess.records] == [1.0, 1.0] + [1.05] * (STEPS - 2)
    # the same thing straight from the pipeline: steps 1-2 at 1.0, then 3.. at 1.05 from the same noise
    pipe = explorer.registry.get("tiny-sdm")
    x = None
    for out in pipe.steps(seed=0, num_inference_steps=STEPS, threshold_scale=1.0):
        if out.index == 1:
            x = out.sample
            break
    for out in pipe.steps(seed=0, num_inference_steps=STEPS, threshold_scale=1.05, sample=x, start_index=2):
        pass
    np.testing.assert_array_equal(sess.x, out.sample.numpy())


def test_compare_scales_share_seed_and_noise(explorer):
    v = start(explorer)
    sess = v["state"]
    drain(explorer.run_to_end(1.0, LAYER, "step", [], sess))
    base, scaled, md = drain(explorer.compare_scales(1.06, sess))
    same, same2, _ = drain(explorer.compare_scales(1.0, sess))
    # each image carries its scale as its label
    assert base["label"] == "threshold scale s = 1.000" and scaled["label"] == "threshold scale s = 1.060"
    base, scaled, same, same2 = (u["value"] for u in (base, scaled, same, same2))
    np.testing.assert_array_equal(same, same2)
    np.testing.assert_array_equal(base, same)
    assert not np.array_equal(base, scaled) and "1.060" in md
    r = compare.compare_scales(sess, 1.06)
    np.testing.assert_array_equal(r["base"], sess.x)                          # the trajectory just run at 1.0
    fresh = explorer.registry.get("tiny-sdm").sample(n=1, seed=0, num_inference_steps=STEPS, threshold_scale=1.06)
    np.testing.assert_allclose(imaging.to_display(r["scaled"]), fresh, atol=1e-6)


def test_compare_with_the_ann_counterpart(explorer):
    v = start(explorer)
    snn, ann, md = drain(explorer.compare_ann(1.0, v["state"]))
    assert snn["label"] == "SNN: tiny-sdm (s = 1.000)" and ann["label"] == "ANN: tiny-ann"
    snn, ann = snn["value"], ann["value"]
    assert snn.shape == ann.shape and not np.array_equal(snn, ann)
    assert "tiny-ann" in md and "SNN / ANN" in md
    a = start(explorer, checkpoint="tiny-ann")
    assert "ANN" in a["energy_md"] and "no spikes" in a["raster"].to_json()
    with pytest.raises(ValueError, match="itself an ANN"):
        drain(explorer.compare_ann(1.0, a["state"]))


def test_exports_read_back_with_every_frame(explorer, tmp_path):
    import cv2
    import imageio.v3 as iio

    v = start(explorer, grid=4)
    sess = v["state"]
    drain(explorer.run_to_end(1.0, LAYER, "step", [], sess))
    gif, mp4, png, npz, md = explorer.export(sess)
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == STEPS + 1 and frames.shape[-1] == 3
    hold = round(app.trajectory_export.HOLD_LAST_S * 10)                  # the MP4 repeats the last frame
    h, w = frames.shape[1:3]
    cap = cv2.VideoCapture(mp4)
    count, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count, shape = count + 1, frame.shape
    cap.release()
    assert count == STEPS + 1 + hold and shape[:2] == (h + h % 2, w + w % 2)
    assert iio.imread(png).ndim == 3
    rec, meta = load_npz(npz)
    T = sess.pipe.config.time_steps
    assert rec[f"spikes/{LAYER}"].shape == (STEPS, T, 64) and rec[f"spikes/{LAYER}"].dtype == bool
    assert rec[f"v/{LAYER}"].dtype == np.float16
    assert rec["x_t"].shape == (STEPS, 4, 1, 28, 28) and rec["timesteps"].tolist() == sess.timesteps
    assert meta["steps_recorded"] == STEPS and meta["frames"] == STEPS + 1 and LAYER in meta["layers"]
    assert rec["firing_rate"].shape == (STEPS, len(meta["layers"]))


def test_views_for_every_mode_and_layer(explorer):
    v = start(explorer)
    sess = v["state"]
    drain(explorer.step(3, 1.0, LAYER, "step", [], sess))
    names = explorer.registry.get("tiny-sdm").layer_names()
    out = app.as_dict(explorer.select_layer(names[-1], "trajectory", [0, 5], sess), app.LAYER_KEYS)
    raster = out["raster"]
    assert "showing 64 of" in raster.to_json()
    boundaries = [t for t in raster.data if t.name == "step boundaries"][0]
    assert np.isfinite(np.asarray(boundaries.x, dtype=float)).sum() == 2 * 3       # 3 separators between 4 steps
    assert [t.name for t in out["traces"].data] == ["neuron 0", "neuron 5", "spike, then reset"]
    assert figure_points(out["tsm_curve"]) == 4
    with pytest.raises(ValueError, match="not recorded"):
        explorer.select_layer(names[0], "step", [99], sess)
    with pytest.raises(ValueError, match="not a layer"):
        explorer.select_layer("nope", "step", [], sess)
    info = explorer.checkpoint_info("tiny-sdm-vanilla", LAYER)
    assert "no TSM" in info[4] and "no TSM" in info[2].to_json()


def test_the_side_by_side_threshold_view(explorer):
    v = start(explorer)
    sess = v["state"]
    white = v["img_diff"]
    assert (white == 255).all() and np.array_equal(v["img_x0_base"], v["img_x0"])        # s = 1.0: no difference
    assert "Move the **threshold slider**" in v["threshold_md"]
    t = view(drain(explorer.set_threshold(1.08, LAYER, "step", [], sess)), app.THRESHOLD_KEYS)
    np.testing.assert_array_equal(t["img_x0_base"], v["img_x0_base"])                     # scale 1.0 stays
    assert not np.array_equal(t["img_x0"], v["img_x0"]) and (t["img_diff"] != 255).any()
    effect = display.threshold_effect(sess, LAYER)
    assert f"{effect['base_spikes']:,.0f} at s = 1.0 → {effect['spikes']:,.0f} at s = 1.080" in t["threshold_md"]
    # the rate bars: scale 1.0 as hollow ghost bars behind the slider's scale, the spike change in numbers
    ghost, solid = t["rate_bars"].data
    assert ghost.name == "s = 1.0" and solid.name == "s = 1.080"
    assert list(ghost.x) == [sess.records[-1].rates[n] for n in sess.num_neurons]
    assert "spikes/image" in t["rate_bars"].layout.title.subtitle.text
    assert f"{effect['layer_base_spikes']:,} at s = 1.0" in t["raster"].to_json()
    # a step recorded at another scale is compared with the same step re-run at 1.0
    s = view(explorer.new_trajectory("tiny-sdm", 0, "ddim", STEPS, 1.05, 1, LAYER, "step", [], None))
    np.testing.assert_array_equal(s["img_x0_base"], v["img_x0_base"])
    assert "s = 1.050 vs 1.0" in s["threshold_md"] and s["info"]["recorded_scale"] == 1.05


def test_the_slider_after_the_end_streams_the_generated_image(explorer, monkeypatch):
    monkeypatch.setattr(app, "GENERATED_EVERY_S", 0.0)      # every step of the run at s refreshes the picture
    sess = start(explorer, seed=11)["state"]
    mid = view(drain(explorer.set_threshold(1.05, LAYER, "step", [], sess)), app.THRESHOLD_KEYS)
    assert mid["info"]["final_difference"] is None           # mid-run, not asked for: the step preview
    assert mid["threshold_md"].startswith("**Step 1 preview:** **s = 1.050 vs 1.0**, same x_t")
    end = view(drain(explorer.run_to_end(1.0, LAYER, "step", [], sess)))
    assert end["info"]["done"] and end["info"]["final_difference"] == 0.0
    assert end["threshold_md"].startswith("**Generated images from the same noise: s = 1.000 vs s = 1.000**")
    outs = [view(o, app.THRESHOLD_KEYS) for o in explorer.set_threshold(0.95, LAYER, "step", [], sess)]
    trio = [o for o in outs if isinstance(o["img_x0"], np.ndarray)]
    assert len(trio) >= STEPS                                 # a picture after every step, then the final one
    assert "generating at s: step 1 / 8" in trio[0]["threshold_md"]
    last = outs[-1]
    scaled, _ = compare.final_image(sess, 0.95)
    assert last["info"]["final_difference"] == pytest.approx(
        float(np.abs((np.clip(scaled, -1, 1) - np.clip(sess.x, -1, 1)) / 2).mean()))
    assert 0 < last["info"]["final_difference"] < 1 and last["info"]["final_difference_scale"] == 0.95
    assert np.array_equal(last["img_x0"], panels.grid_image(imaging.to_display(scaled), panels.SMALL_PX))
    # the same scale again: from the shared results, one output, nothing computed
    computes = explorer.results.stats()["computes"]
    again = [view(o, app.THRESHOLD_KEYS) for o in explorer.set_threshold(0.95, LAYER, "step", [], sess)]
    assert explorer.results.stats()["computes"] == computes
    assert again[-1]["info"]["final_difference"] == last["info"]["final_difference"]


def test_the_generated_image_mid_run_on_request(explorer):
    sess = start(explorer, seed=12)["state"]
    drain(explorer.step(2, 1.0, LAYER, "step", [], sess))
    out = view(drain(explorer.show_generated(1.05, LAYER, "step", [], sess)), app.THRESHOLD_KEYS)
    assert not out["info"]["done"] and out["info"]["final_difference"] > 0
    assert out["threshold_md"].startswith("**Generated images from the same noise: s = 1.000 vs s = 1.050**")
    out = view(drain(explorer.set_threshold(0.95, LAYER, "step", [], sess)), app.THRESHOLD_KEYS)
    assert out["info"]["final_difference_scale"] == 0.95      # the slider keeps showing them
    out = start(explorer, seed=12)                            # until a new trajectory
    assert out["info"]["final_difference"] is None


def test_run_to_end_is_shared_and_bitwise_a_solo_run(explorer):
    a = start(explorer, seed=13)["state"]
    b = start(explorer, seed=13)["state"]
    drain(explorer.run_to_end(1.0, LAYER, "step", [], a))
    computes = explorer.results.stats()["computes"]
    ib = view(drain(explorer.run_to_end(1.0, LAYER, "step", [], b)))["info"]
    assert explorer.results.stats()["computes"] == computes and b.records[-1] is a.records[-1]
    ref = Session()
    ref.start(explorer.registry.get("tiny-sdm"), "tiny-sdm", seed=13, num_steps=STEPS,
              ann_counterpart=explorer.registry.ann_counterpart("tiny-sdm"))
    while not ref.is_done:
        ref.advance(1, 1.0)
    ir = display.info(ref)
    for k in ("sample_digest", "x0_digest", "firing_rates", "energy", "steps_done"):
        assert ib[k] == ir[k], k


def test_the_shared_results_count_against_the_memory_cap():
    from sdm.explorer.pool import MAX_TOTAL_BYTES

    ex = app.Explorer(ModelRegistry(FIXTURES))
    assert ex.pool.max_bytes + ex.results.max_bytes == MAX_TOTAL_BYTES and ex.results.max_bytes > 0


def test_spiking_time_steps_through_the_app(explorer):
    v8 = view(explorer.new_trajectory("tiny-sdm", 0, "ddim", STEPS, 1.0, 1, LAYER, "step", [], None, 8))
    v4 = start(explorer)
    assert v8["info"]["time_steps"] == 8 and v4["info"]["time_steps"] == 4
    assert "T = 8 spiking steps τ" in v8["status"]
    assert list(v8["raster"].layout.xaxis.range) == [-0.5, 7.5]
    assert v8["info"]["x0_digest"] != v4["info"]["x0_digest"]
    assert v8["info"]["energy"]["sops"] > v4["info"]["energy"]["sops"]
    heat, curve, note = explorer.tsm_view(LAYER, v8["state"])
    assert np.asarray(heat.data[0].z).shape[1] == 8 and "runs T = 8" in note
    assert any(t.name == "repeated (beyond the trained T)" for t in curve.data)
    radio = explorer.controls(v8["state"])[app.CONTROL_KEYS.index("time_steps")]
    assert radio.value == 8 and ("4 (trained)", 4) in radio.choices and radio.interactive
    with pytest.raises(ValueError, match="spiking time steps T must be one of"):
        explorer.new_trajectory("tiny-sdm", 0, "ddim", STEPS, 1.0, 1, LAYER, "step", [], None, 3)


def test_controls_follow_the_session(explorer):
    assert all(u == gr.skip() for u in explorer.controls(None))
    sess = start(explorer)["state"]

    def interactive(state):
        state.ui_controls_sent = None       # as a freshly loaded page: everything is sent
        return dict(zip(app.CONTROL_KEYS, (u.interactive for u in explorer.controls(state))))

    assert all(interactive(sess).values())
    drain(explorer.run_to_end(1.0, LAYER, "step", [], sess))
    done = interactive(sess)
    # finished: the buttons that step forward are off, and Continue from here while the view is on the last step
    # (at 50/50 it had nothing to re-run but the last step); the others (compare, export) stay on
    assert [k for k, on in done.items() if not on] == list(outputs.FORWARD_KEYS) + ["continue_btn"]
    assert "Finished" in panels.status_markdown(sess)
    # scrubbed back to an earlier step, Continue from here is on again (and not the buttons that step forward)
    explorer.scrub(3, LAYER, "step", [], sess)
    assert [k for k, on in interactive(sess).items() if not on] == list(outputs.FORWARD_KEYS)
    # what did not change for this tab is not sent again (gradio rebuilds every returned component's config), except
    # the T control, which a checkpoint switch resets
    again = dict(zip(app.CONTROL_KEYS, explorer.controls(sess)))
    assert all(again[k] == gr.skip() for k in outputs.ACTION_KEYS + ("threshold",))
    assert again["time_steps"].value == 4
    explorer.scrub(STEPS, LAYER, "step", [], sess)             # back on the last step: Continue goes off again
    changed = dict(zip(app.CONTROL_KEYS, explorer.controls(sess)))
    assert changed["continue_btn"].interactive is False and changed["threshold"].interactive
    ann = start(explorer, checkpoint="tiny-ann")["state"]
    ann.ui_controls_sent = None
    slider = explorer.controls(ann)[app.CONTROL_KEYS.index("threshold")]
    assert not slider.interactive and "an ANN has no thresholds" in slider.info
    assert not interactive(ann)["time_steps"]
    # switching checkpoints sets T to the new one's own (the ANN's "none" is not carried over)
    radio = explorer.trained_time_steps("tiny-sdm")
    assert radio.value == 4 and ("4 (trained)", 4) in radio.choices


def test_lesson_presets_and_the_ui_validator(explorer):
    presets = lesson_presets(explorer.registry, "tiny-sdm")
    labels = [label for label, _ in presets]
    assert any("T = 8" in label for label in labels) and any("ANN" in label for label in labels)
    t8 = next(label for label in labels if "T = 8" in label)
    assert explorer.lesson(t8) == ("tiny-sdm", 0, "ddim", 50, 1.0, 1, 8)
    assert explorer.lesson(labels[0])[-1] == 4                                   # the checkpoint's own T
    with pytest.raises(ValueError, match="lesson preset"):
        explorer.lesson("no such lesson")
    ok = app.settings_validator("tiny-sdm", 0, "ddim", 50, 1.0, 1, LAYER, "step", [], None, 4)
    assert all(r["is_valid"] for r in ok)
    bad = app.settings_validator("tiny-sdm", -1, "ddim", 5000, 1.0, 1, LAYER, "step", [], None, 4)
    assert [r["is_valid"] for r in bad] == [True, False, True, False] + [True] * 7
    assert "Seed must be" in bad[1]["message"] and "Number of steps must be between 1 and 1000" in bad[3]["message"]


def test_friendly_layer_names_everywhere(explorer):
    v = start(explorer)
    label = display.layer_label(LAYER)
    for key in ("raster", "membrane", "traces"):
        assert label in v[key].layout.title.text and LAYER in v[key].layout.title.subtitle.text
    assert label in list(v["rate_bars"].data[-1].y)
    assert (label, LAYER) in app.layer_choices([LAYER])


def test_bad_inputs_give_clear_errors_and_the_session_survives(explorer):
    step = app.user_errors(explorer.step)
    new = app.user_errors(explorer.new_trajectory)
    with pytest.raises(gr.Error, match="New trajectory"):
        drain(step(1, 1.0, LAYER, "step", [], None))
    v = start(explorer)
    sess = v["state"]
    bad = [
        (step, (0, 1.0, LAYER, "step", [], sess), "steps per click"),
        (step, (10 ** 9, 1.0, LAYER, "step", [], sess), "steps per click"),
        (step, (1, float("nan"), LAYER, "step", [], sess), "threshold scale"),
        (step, (1, "1.0", LAYER, "step", [], sess), "threshold scale"),
        (step, (1, 1.5, LAYER, "step", [], sess), "threshold scale"),
        (step, (1, 1.0, "no.such.layer", "step", [], sess), "not a layer"),
        (new, ("no-such-model", 0, "ddim", 5, 1.0, 1, LAYER, "step", [], sess), "not found"),
        (new, ("tiny-sdm", -1, "ddim", 5, 1.0, 1, LAYER, "step", [], sess), "seed"),
        (new, ("tiny-sdm", 0, "euler", 5, 1.0, 1, LAYER, "step", [], sess), "sampler"),
        (new, ("tiny-sdm", 0, "ddim", 0, 1.0, 1, LAYER, "step", [], sess), "number of steps"),
        (new, ("tiny-sdm", 0, "ddim", 2.5, 1.0, 1, LAYER, "step", [], sess), "whole number"),
        (new, ("tiny-sdm", 0, "ddim", 5, float("inf"), 1, LAYER, "step", [], sess), "threshold scale"),
        (new, ("tiny-sdm", 0, "ddim", 5, 1.0, 1000, LAYER, "step", [], sess), "grid size"),
    ]
    for fn, args, needle in bad:
        with pytest.raises(gr.Error, match="(?i)" + needle):
            drain(fn(*args))
    # nothing above touched the session
    assert display.info(sess)["steps_done"] == 1 and sess.settings.checkpoint == "tiny-sdm"
    assert view(drain(step(1, 1.0, LAYER, "step", [], sess)))["info"]["step"] == 2
    # the API inputs reach the handlers as sent (gradio's own conversion would fail first with a generic
    # message): the explorer's validator names them
    for comp in (app.RawSlider(0.9, 1.1, elem_id="threshold"), app.RawNumber(elem_id="seed", minimum=0),
                 app.RawRadio([("1", 1), ("4", 4), ("16", 16)], elem_id="grid-size")):
        for payload in ("abc", float("nan"), True, [1], None):
            assert comp.preprocess(payload) is payload
    assert app.RawRadio([("1", 1)]).get_block_name() == "radio"
    for payload in (1000, "4", True, None):
        with pytest.raises(gr.Error, match="Grid size must be one of 1, 4, 16"):
            new("tiny-sdm", 0, "ddim", 5, 1.0, payload, LAYER, "step", [], sess)
    assert display.info(sess)["steps_done"] == 2


def test_a_corrupted_checkpoint_is_reported_while_the_others_work(explorer, tmp_path):
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "tiny-sdm")
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "broken")
    weights = tmp_path / "broken" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    ex = app.Explorer(ModelRegistry(tmp_path))
    summary, *_ = ex.checkpoint_info("broken")
    assert "cannot be loaded" in summary and "corrupted or truncated" in summary
    with pytest.raises(gr.Error, match="broken.*cannot be loaded"):
        app.user_errors(ex.new_trajectory)("broken", 0, "ddim", 4, 1.0, 1, LAYER, "step", [], None)
    assert ex.registry.default_name() == "tiny-sdm"
    v = view(ex.new_trajectory("tiny-sdm", 0, "ddim", 4, 1.0, 1, LAYER, "step", [], None))
    assert v["info"]["checkpoint"] == "tiny-sdm"


def test_a_converted_if_model_is_listed_and_its_neuron_views_work(tmp_path):
    from sdm import ModelConfig, SpikingUNet
    from sdm.checkpoints import save_checkpoint
    from sdm.config import DiffusionConfig
    from sdm.convert import convert

    torch.manual_seed(0)
    qann = SpikingUNet(ModelConfig(base_channels=8, channel_mult=(1, 2), time_embed_dim=16, neuron="qann", bits=2))
    torch.nn.init.normal_(qann.out.conv.weight, std=0.2)
    for _, m in qann.activations():
        m.alpha.data.fill_(0.5)
    save_checkpoint(tmp_path / "tiny-ann2snn-t3", convert(qann), DiffusionConfig(),
                    {"name": "tiny-ann2snn-t3", "conversion": {"source": "tiny-qann", "bits": 2, "T": 3}})
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "tiny-sdm")
    ex = app.Explorer(ModelRegistry(tmp_path))
    assert "tiny-ann2snn-t3" in ex.registry.names()
    summary, layers, heat, curve, note, _ = ex.checkpoint_info("tiny-ann2snn-t3", LAYER)
    assert "IF" in summary and "T=3" in summary.replace(" ", "")
    assert "no TSM" in note and "converted from a 2-bit quantised ANN" in note
    v = view(ex.new_trajectory("tiny-ann2snn-t3", 0, "ddim", 4, 1.0, 1, LAYER, "step", [], None))
    sess = v["state"]
    v = view(drain(ex.step(2, 1.0, LAYER, "step", [], sess)))
    assert v["info"]["step"] == 3 and v["info"]["mean_firing_rate"] > 0
    assert figure_points(v["raster"]) > 0 and figure_points(v["traces"]) > 0
    out = app.as_dict(ex.select_layer("out.act", "trajectory", [], sess), app.LAYER_KEYS)
    assert figure_points(out["raster"]) > 0 and figure_points(out["tsm_curve"]) == 0
    t = view(drain(ex.set_threshold(1.05, LAYER, "step", [], sess)), app.THRESHOLD_KEYS)
    assert t["info"]["mean_firing_rate"] < v["info"]["mean_firing_rate"]


def test_sessions_do_not_see_each_other(explorer):
    a = start(explorer, seed=1)["state"]
    b = start(explorer, seed=2, scale=1.04)["state"]
    for _ in range(3):
        drain(explorer.step(1, 1.0, LAYER, "step", [], a))
        drain(explorer.step(1, 1.04, LAYER, "step", [], b))
        drain(explorer.set_threshold(0.95, LAYER, "step", [], b))
    solo_a = start(explorer, seed=1)["state"]
    drain(explorer.step(3, 1.0, LAYER, "step", [], solo_a))
    solo_b = start(explorer, seed=2, scale=1.04)["state"]
    drain(explorer.step(3, 1.04, LAYER, "step", [], solo_b))
    np.testing.assert_array_equal(a.x, solo_a.x)
    np.testing.assert_array_equal(b.x, solo_b.x)
    assert display.info(a)["threshold_scale"] == 1.0 and display.info(b)["threshold_scale"] == pytest.approx(0.95)


def test_recorded_data_is_bounded(explorer):
    pipe = explorer.registry.get("tiny-sdm")
    sess = Session()
    sess.start(pipe, "tiny-sdm", seed=0, sampler="ddpm", num_steps=1000, grid=16)
    sess.advance(4, 1.0)
    per_step = sum(r.nbytes for r in sess.records) / sess.num_recorded
    assert per_step * 1000 < 200 * 2 ** 20
    assert estimate_state_bytes(pipe, 1000, 16) >= per_step * 1000
    assert estimate_state_bytes(pipe, 1000, 16) <= MAX_STATE_BYTES
    rec = sess.records[0]
    assert rec.x0.dtype == np.float16 and rec.eps.dtype == np.float16
    assert all(a.dtype == np.float16 and a.shape[1] <= 64 for a in rec.v.values())
    sess.close()
    assert sess.nbytes() == 0 and not sess.started
    with pytest.raises(ValueError, match="MB"):
        Session(max_bytes=2 ** 20).start(pipe, "tiny-sdm", num_steps=1000, grid=16)


def test_main_serves_on_all_interfaces_and_honours_the_port(monkeypatch):
    seen = {}

    class FakeDemo:
        def launch(self, **kw):
            seen.update(kw)

    monkeypatch.setattr(app, "build_demo", FakeDemo)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    threads = torch.get_num_threads()
    try:
        app.main()
    finally:
        torch.set_num_threads(threads)
    assert seen["server_port"] == 7999 and seen["server_name"] == "0.0.0.0"
    assert seen["css"] and seen["theme"] is not None


def test_importing_app_loads_no_model_and_demo_is_built_on_first_use():
    import subprocess
    import sys

    code = ("import sdm.pipeline as p\n"
            "def boom(*a, **k): raise SystemExit('a model was loaded')\n"
            "p.SpikingDiffusionPipeline.__init__ = boom\n"
            "import app\n"
            "assert 'demo' not in vars(app), 'app.demo was built at import'\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(app.__file__), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# ---------------------------------------------------------------------------------- the launched app

def test_gradio_client_new_trajectory_step_threshold_export(served):
    from gradio_client import Client
    import imageio.v3 as iio

    client = Client(served, verbose=False)
    api = client.view_api(return_format="dict")["named_endpoints"]
    for name in ("/new_trajectory", "/step", "/set_threshold", "/run_to_end", "/export", "/scrub"):
        assert name in api

    def info(result, keys=app.VIEW_KEYS):
        return result[keys.index("info") - 1]          # gr.State is not part of the API's outputs

    r = client.predict(checkpoint="tiny-sdm", seed=5, sampler="ddim", num_steps=6, threshold_scale=1.0,
                       grid_size=1, api_name="/new_trajectory")
    assert len(r) == len(app.VIEW_KEYS) - 1
    assert info(r)["step"] == 1 and info(r)["seed"] == 5
    r = client.predict(n_steps=2, threshold_scale=1.0, api_name="/step")
    before = info(r)
    assert before["step"] == 3
    r = client.predict(threshold_scale=1.07, api_name="/set_threshold")
    after = info(r, app.THRESHOLD_KEYS)
    assert after["previewing"] and after["x0_digest"] != before["x0_digest"]
    assert after["firing_rates"] != before["firing_rates"] and after["step"] == 3
    gif, mp4, png, npz, md = client.predict(api_name="/export")
    assert iio.imread(gif, index=None).shape[0] == 4            # 3 steps + the current sample
    rec, meta = load_npz(npz)
    assert meta["steps_recorded"] == 3 and meta["seed"] == 5
    assert os.path.getsize(mp4) > 0 and iio.imread(png).ndim == 3
    # the same result as a direct, solo session
    solo = Session()
    solo.start(ModelRegistry(FIXTURES).get("tiny-sdm"), "tiny-sdm", seed=5, num_steps=6)
    solo.advance(2, 1.0)
    assert display.info(solo)["sample_digest"] == before["sample_digest"]

    # a second client has its own session: no trajectory yet, a clear error, and the server keeps answering
    other = Client(served, verbose=False)
    with pytest.raises(Exception, match="No trajectory yet"):
        other.predict(api_name="/step")
    with pytest.raises(Exception, match="Threshold scale must be a number"):
        client.predict(threshold_scale="abc", api_name="/set_threshold")
    r = client.predict(api_name="/run_to_end")
    assert info(r)["done"] and info(r)["steps_done"] == 6
    # the spiking time steps are a new parameter with a default (the checkpoint's own T)
    r = client.predict(checkpoint="tiny-sdm", seed=5, sampler="ddim", num_steps=6, threshold_scale=1.0,
                       grid_size=1, time_steps=8, api_name="/new_trajectory")
    assert info(r)["time_steps"] == 8
    assert "time_steps" in [p["parameter_name"] for p in api["/new_trajectory"]["parameters"]]


def test_gradio_client_final_difference_is_null_then_set(served):
    from gradio_client import Client

    client = Client(served, verbose=False)

    def info(result):
        return result[app.THRESHOLD_KEYS.index("info") - 1]

    client.predict(checkpoint="tiny-sdm", seed=21, sampler="ddim", num_steps=6, threshold_scale=1.0, grid_size=1,
                   api_name="/new_trajectory")
    mid = info(client.predict(threshold_scale=1.05, api_name="/set_threshold"))
    assert mid["final_difference"] is None and not mid["done"]
    client.predict(threshold_scale=1.0, api_name="/run_to_end")
    up = info(client.predict(threshold_scale=1.05, api_name="/set_threshold"))
    down = info(client.predict(threshold_scale=0.95, api_name="/set_threshold"))
    assert 0 < up["final_difference"] < 1 and 0 < down["final_difference"] < 1
    assert (up["final_difference_scale"], down["final_difference_scale"]) == (1.05, 0.95)
    # the same lesson from another client: the same numbers (one computation, the same images)
    other = Client(served, verbose=False)
    other.predict(checkpoint="tiny-sdm", seed=21, sampler="ddim", num_steps=6, threshold_scale=1.0, grid_size=1,
                  api_name="/new_trajectory")
    end = other.predict(threshold_scale=1.0, api_name="/run_to_end")
    assert end[app.VIEW_KEYS.index("info") - 1]["final_difference"] == 0.0
    assert info(other.predict(threshold_scale=0.95, api_name="/set_threshold"))["final_difference"] == \
        down["final_difference"]


# ------------------------------------------------------------------------------ no silent or misleading state

def heading(status: str) -> str:
    return status.split("\n", 1)[0]


def test_a_replaced_trajectory_says_why(explorer):
    """T, a DDIM step preset or the checkpoint changed: the status says the trajectory was replaced, what changed and
    where the old one stopped (it used to restart with no message)."""
    v = start(explorer)
    assert "New trajectory" not in v["status"]                                        # nothing replaced: no note
    t8 = view(explorer.new_trajectory("tiny-sdm", 0, "ddim", STEPS, 1.0, 1, LAYER, "step", [], v["state"], 8))
    assert "**New trajectory**: T = 8 spiking steps τ (was 4); the previous one stopped at step 1 of 8." in \
        t8["status"]
    preset = view(explorer.new_trajectory("tiny-sdm", 0, "ddim", 20, 1.0, 1, LAYER, "step", [], v["state"], 8))
    assert "DDIM 20 steps (was DDIM 8)" in preset["status"] and heading(preset["status"]).startswith("### Step 1 / 20")
    other = view(explorer.new_trajectory("tiny-sdm-vanilla", 0, "ddim", 20, 1.0, 1, LAYER, "step", [],
                                         v["state"]))
    assert "tiny-sdm-vanilla (was tiny-sdm), T = 4 spiking steps τ (was 8)" in other["status"]
    drain(explorer.run_to_end(1.0, LAYER, "step", [], other["state"]))
    again = view(explorer.new_trajectory("tiny-sdm-vanilla", 0, "ddim", 20, 1.0, 1, LAYER, "step", [],
                                         v["state"]))
    assert "New trajectory" not in again["status"]       # the same settings after a finished one: nothing to say
    # the status is a heading and one line
    assert all(s.count("\n\n") == 1 for s in (v["status"], t8["status"], again["status"]))


def test_the_same_new_trajectory_twice_keeps_the_session_and_its_note(explorer):
    """A control that fires twice (the browser sent a checkpoint switch's new trajectory twice, under load) asks for
    the trajectory the session already holds at its first step: nothing is recomputed and the status keeps saying
    what was replaced ("(was …)"), where it used to say "New trajectory; the previous one stopped at step 1"."""
    v = start(explorer)
    args = ("tiny-sdm-vanilla", 0, "ddim", STEPS, 1.0, 1, LAYER, "step", [], v["state"])
    first = view(explorer.new_trajectory(*args))
    sess, generation = first["state"], first["state"].generation
    record = sess.records[0]
    twice = view(explorer.new_trajectory(*args))
    assert sess.generation == generation and sess.records[0] is record           # nothing was redone
    assert "tiny-sdm-vanilla (was tiny-sdm)" in first["status"] and twice["status"] == first["status"]
    # anything else that differs still starts anew: another seed, or the same settings after a step
    seed = view(explorer.new_trajectory("tiny-sdm-vanilla", 1, *args[2:]))
    assert sess.generation == generation + 1 and "seed 1 (was 0)" in seed["status"]
    drain(explorer.step(1, 1.0, LAYER, "step", [], sess))
    again = view(explorer.new_trajectory("tiny-sdm-vanilla", 1, *args[2:]))
    assert sess.generation == generation + 2 and sess.num_recorded == 1
    assert "the previous one stopped at step 2" in again["status"]


def test_a_run_replaced_mid_run_says_so(explorer, monkeypatch):
    """Switching checkpoint while Run to end runs: the run stops and says why, and leaves the new trajectory's view
    alone (it used to stop silently and redraw with the old view)."""
    said = []
    monkeypatch.setattr(app.gr, "Warning", lambda msg, *a, **k: said.append(msg))
    sess = view(explorer.new_trajectory("tiny-sdm", 0, "ddim", 400, 1.0, 1, LAYER, "step", [], None))["state"]
    run = explorer.run_to_end(1.0, LAYER, "step", [], sess)
    next(run)                                                                # the run has started
    new = view(explorer.new_trajectory("tiny-sdm-vanilla", 0, "ddim", 400, 1.0, 1, LAYER, "step", [], sess))
    rest = list(run)
    assert rest[-1] == app.SKIP_VIEW and said and "Running to the end stopped: a new trajectory" in said[0]
    assert "tiny-sdm-vanilla (was tiny-sdm); the previous one stopped at step" in new["status"]
    assert sess.settings.checkpoint == "tiny-sdm-vanilla" and sess.num_recorded == 1


def test_the_pause_notice_counts_steps_as_the_status_does(monkeypatch):
    """Over its time budget a run says "Paused at step k of N", the numbers of the status heading "Step k / N" (it
    said "Paused after 207 of 999 steps" beside "Step 208 / 1000")."""
    said = []
    monkeypatch.setattr(app.gr, "Info", lambda msg, *a, **k: said.append(msg))
    ex = app.Explorer(ModelRegistry(FIXTURES), run_budget_s=0.05)
    sess = view(ex.new_trajectory("tiny-sdm", 0, "ddim", 1000, 1.0, 1, LAYER, "step", [], None))["state"]
    last = view(drain(ex.run_to_end(1.0, LAYER, "step", [], sess)))
    k, n = sess.num_recorded, 1000
    assert 1 < k < n and said == [panels.paused_note(sess, 0.05)]
    assert said[0].startswith(f"Paused at step {k} of {n}:") and heading(last["status"]).startswith(f"### Step {k} / {n}")


def test_refused_steps_are_said_on_the_status_line(explorer):
    """5000 steps: besides the validator's message at the box (maybe off screen), the status line says it and keeps
    the trajectory's heading (nothing happened on screen before)."""
    sess = start(explorer)["state"]
    status = app.settings_status(0, 5000, sess)
    assert heading(status) == heading(panels.status_markdown(sess))
    assert "⚠ Number of steps must be between 1 and 1000, got 5000" in status and "nothing was started" in status
    assert "Seed must be" in app.settings_status(-1, 50, None)
    assert app.settings_status(0, 50, sess) == gr.skip()


def test_the_lesson_label_clears_when_the_checkpoint_changes_and_fits_its_box(explorer):
    cfg = app.demo.config
    ids = {b.elem_id: i for i, b in app.demo.blocks.items() if getattr(b, "elem_id", None)}
    clears = [d for d in cfg["dependencies"] if [ids["checkpoint"], "input"] in [list(t) for t in d["targets"]]
              and ids["lesson"] in d["outputs"]]
    assert len(clears) == 1 and app.clear_lesson().value is None
    from sdm.explorer.presets import MAX_LESSON_LABEL
    labels = [label for label, _ in lesson_presets(explorer.registry, "tiny-sdm")]
    assert len(labels) >= 8 and max(map(len, labels)) <= MAX_LESSON_LABEL


def test_the_spike_change_is_worded_from_its_sign(explorer):
    """At s < 1 a step may still spike less: the caption says what happened here (it said "fewer spikes (on average
    s > 1 gives fewer)" beside −1.2% at s = 0.945)."""
    effect = dict(base_spikes=1000.0, spikes=988.0, scale=0.945)
    assert panels.spike_direction(effect) == "fewer spikes here, although s < 1 gives more on average"
    assert panels.spike_direction(dict(effect, spikes=1012.0)) == "more spikes, as s < 1 gives on average"
    assert panels.spike_direction(dict(effect, scale=1.05)) == "fewer spikes, as s > 1 gives on average"
    assert panels.spike_direction(dict(effect, scale=1.05, spikes=1012.0)) == \
        "more spikes here, although s > 1 gives fewer on average"
    sess = start(explorer)["state"]
    for s in (0.95, 1.05):
        md = view(drain(explorer.set_threshold(s, LAYER, "step", [], sess)), app.THRESHOLD_KEYS)["threshold_md"]
        e = display.threshold_effect(sess)
        here = "fewer" if e["spikes"] < e["base_spikes"] else "more"
        assert f"{here} spikes" in md and ("s > 1 gives fewer" not in md or s > 1)


def test_energy_and_ann_figures_belong_to_the_checkpoints_own_counterpart(tmp_path):
    """A spiking checkpoint without an ANN counterpart shows no ANN energy anywhere, and says why (mnist-sdm-t4
    showed "ANN 29" while Compare said it had none); once its counterpart is listed, by name, it is compared."""
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "tiny-sdm")
    ex = app.Explorer(ModelRegistry(tmp_path))
    v = view(ex.new_trajectory("tiny-sdm", 0, "ddim", 4, 1.0, 1, LAYER, "step", [], None))
    assert "ANN" not in v["status"]
    assert "No ANN counterpart checkpoint for tiny-sdm" in v["energy_md"] and "mJ" in v["energy_md"]
    assert "ANN counterpart (" not in v["energy_md"] and list(v["energy_plot"].data[0].x) == ["SNN"]
    assert v["info"]["ann_counterpart"] is None and v["info"]["energy"]["ann_mj"] is None
    assert v["info"]["energy"]["ratio"] is None and v["info"]["energy"]["energy_mj"] > 0
    shutil.copytree(FIXTURES / "tiny-ann", tmp_path / "tiny-ann")                # e.g. mnist-ann added later
    w = view(ex.new_trajectory("tiny-sdm", 0, "ddim", 4, 1.0, 1, LAYER, "step", [], v["state"]))
    assert "ANN counterpart (tiny-ann)" in w["energy_md"] and list(w["energy_plot"].data[0].x) == ["SNN", "ANN"]
    assert w["info"]["ann_counterpart"] == "tiny-ann" and w["info"]["energy"]["ann_mj"] > 0


def test_the_filmstrip_is_drawn_at_the_size_it_is_shown(explorer):
    """Ten frames at 3x, two-line 16 px captions, and no pixelated CSS scaling (1153 px shown at 944 px made "step 18"
    read "step 13")."""
    sess = start(explorer)["state"]
    drain(explorer.run_to_end(1.0, LAYER, "step", [], sess))
    strip = panels.filmstrip_image(sess)
    h = sess.pipe.config.image_size * panels.FILMSTRIP_SCALE
    assert strip.shape[0] == 2 * (h + 6) + 4 + 2 * (panels.FILMSTRIP_CAPTION_PX + 4)
    assert strip.shape[1] == min(10, STEPS + 1) * (h + 3) + 3
    assert 10 * (28 * panels.FILMSTRIP_SCALE + 3) + 3 <= 900                      # 28 px images: 873 px wide
    film = next(b for b in app.demo.blocks.values() if getattr(b, "elem_id", None) == "filmstrip")
    assert "pixelated" not in (film.elem_classes or [])


def test_streams_refresh_less_often_under_load():
    # a class streaming at once costs the server as many picture refreshes as PACE_STREAMS streams would
    from sdm.explorer.sharing import InFlight
    from sdm.ui import streams
    load = InFlight()
    every = streams.paced(0.5, load)
    assert every() == 0.5
    load.count = streams.PACE_STREAMS
    assert every() == 0.5
    load.count = 30
    assert every() == pytest.approx(0.5 * 30 / streams.PACE_STREAMS)
    load.count = 0
    assert every() == 0.5


def test_skipped_outputs_are_answered_as_gradio_would_without_building_components():
    import asyncio
    from gradio.blocks import Blocks
    from gradio.state_holder import SessionState
    demo = app.build_demo(app.Explorer(ModelRegistry(FIXTURES)))
    fn = next(f for f in demo.fns.values() if f.api_name == "run_to_end")
    keys = outputs.VIEW_KEYS
    image = (np.arange(28 * 28 * 3) % 255).astype(np.uint8).reshape(28, 28, 3)
    mixed = [gr.skip() for _ in keys]
    mixed[keys.index("status")] = "**Running** step 3 / 10"
    mixed[keys.index("img_xt")] = image
    mixed[keys.index("info")] = {"step": 3}

    async def both(predictions):
        copy = (lambda p: p if isinstance(p, dict) else list(p))
        theirs, ours = SessionState(demo), SessionState(demo)
        want = await Blocks.postprocess_data(demo, fn, copy(predictions), theirs)
        got = await demo.postprocess_data(fn, copy(predictions), ours)
        return want, got, theirs, ours

    one = [gr.skip() for _ in keys]
    one[keys.index("status")] = "**Running** step 4 / 10"      # a single output sent: gradio unwraps it
    for predictions in (list(outputs.SKIP_VIEW), mixed, one, gr.skip()):
        want, got, theirs, ours = asyncio.run(both(predictions))
        assert got == want
        skipped = [b for b, p in zip(fn.outputs, predictions if isinstance(predictions, list) else outputs.SKIP_VIEW)
                   if isinstance(p, dict) and p == gr.skip() and not b.stateful]
        # gradio built a new component (and its config) for each skipped output; the patch built none
        assert skipped and all(theirs.blocks_config.blocks[b._id] is not b for b in skipped)
        assert all(ours.blocks_config.blocks[b._id] is b for b in skipped)


def test_gradio_no_longer_looks_for_matplotlib_around_every_event(monkeypatch):
    # gradio's call_process_api enters utils.MatplotlibBackendMananger for every event and streamed update, which
    # imports matplotlib (a failed import, searched for on disk each time, where it is not installed)
    import builtins
    import gradio.utils
    app.build_demo(app.Explorer(ModelRegistry(FIXTURES)))
    real = builtins.__import__

    def guard(name, *a, **k):
        assert not name.startswith("matplotlib"), "matplotlib looked for"
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", guard)
    with gradio.utils.MatplotlibBackendMananger():
        pass
