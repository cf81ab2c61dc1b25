"""The launched app under abuse: bad values through the API, concurrent sessions, broken checkpoints.

All through gradio_client against the app on the tiny fixtures, as a stranger on a Space would call it.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import threading

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import FIXTURES, import_app
from harness import serve_demo

app = import_app()
LAYER = "down.0.blocks.0.conv1.act"
LAYER_ARGS = dict(layer=LAYER, raster_mode="step", neurons=[])


def client(url, files: bool = True):
    """A gradio_client; ``files=False`` leaves output files (images, exports) on the server instead of downloading
    them after every call."""
    from gradio_client import Client
    return Client(url, verbose=False, download_files=files)


def info(result, keys=app.VIEW_KEYS) -> dict:
    """The session info of an endpoint's outputs (gr.State is not among the API's outputs)."""
    return result[keys.index("info") - 1]


def start(c, checkpoint="tiny-sdm", seed=0, steps=6, scale=1.0, grid=1, sampler="ddim"):
    return c.predict(checkpoint=checkpoint, seed=seed, sampler=sampler, num_steps=steps, threshold_scale=scale,
                     grid_size=grid, api_name="/new_trajectory", **LAYER_ARGS)


def new_args(**over):
    args = dict(checkpoint="tiny-sdm", seed=0, sampler="ddim", num_steps=6, threshold_scale=1.0, grid_size=1,
                **LAYER_ARGS)
    args.update(over)
    return args


# (what, endpoint, kwargs, a regex the error message must match); "fresh" runs in a session with no trajectory
BAD = [
    # the number of steps of a new trajectory
    ("zero steps", "/new_trajectory", new_args(num_steps=0), r"[Nn]umber of steps must be"),
    ("negative steps", "/new_trajectory", new_args(num_steps=-5), r"[Nn]umber of steps must be"),
    ("10^9 steps", "/new_trajectory", new_args(num_steps=10 ** 9), r"[Nn]umber of steps must be"),
    ("fractional steps", "/new_trajectory", new_args(num_steps=2.5), r"whole number"),
    ("NaN steps", "/new_trajectory", new_args(num_steps=math.nan), r"[Nn]umber of steps must be"),
    ("string steps", "/new_trajectory", new_args(num_steps="ten"), r"[Nn]umber of steps must be"),
    # the seed
    ("negative seed", "/new_trajectory", new_args(seed=-1), r"[Ss]eed must be"),
    ("huge seed", "/new_trajectory", new_args(seed=10 ** 30), r"[Ss]eed must be"),
    ("string seed", "/new_trajectory", new_args(seed="abc"), r"[Ss]eed must be"),
    ("inf seed", "/new_trajectory", new_args(seed=math.inf), r"[Ss]eed must be"),
    # the threshold scale
    ("NaN scale", "/new_trajectory", new_args(threshold_scale=math.nan), r"[Tt]hreshold scale must be"),
    ("inf scale", "/new_trajectory", new_args(threshold_scale=math.inf), r"[Tt]hreshold scale must be"),
    ("string scale", "/new_trajectory", new_args(threshold_scale="abc"), r"[Tt]hreshold scale must be"),
    ("zero scale", "/new_trajectory", new_args(threshold_scale=0), r"[Tt]hreshold scale must be"),
    ("negative scale", "/new_trajectory", new_args(threshold_scale=-1.0), r"[Tt]hreshold scale must be"),
    ("scale far above the slider", "/new_trajectory", new_args(threshold_scale=5.0), r"[Tt]hreshold scale must be"),
    # names and choices
    ("unknown checkpoint", "/new_trajectory", new_args(checkpoint="no-such-model"), r"no-such-model.*(not found|not one)"),
    ("path as checkpoint", "/new_trajectory", new_args(checkpoint="../../etc"), r"not found|not one"),
    ("unknown sampler", "/new_trajectory", new_args(sampler="euler"), r"[Ss]ampler must be"),
    ("huge grid", "/new_trajectory", new_args(grid_size=10 ** 6), r"[Gg]rid size must be one of"),
    ("string grid", "/new_trajectory", new_args(grid_size="many"), r"[Gg]rid size must be one of"),
    ("unknown layer", "/new_trajectory", new_args(layer="no.such.layer"), r"not a layer"),
    ("unknown raster mode", "/new_trajectory", new_args(raster_mode="3d"), r"[Rr]aster mode"),
    ("unknown checkpoint info", "/checkpoint_info", dict(checkpoint="nope", layer=LAYER), r"nope.*(not found|not one)"),
    # actions before any trajectory
    ("step before a trajectory", "fresh:/step", dict(n_steps=1, threshold_scale=1.0, **LAYER_ARGS), r"No trajectory yet"),
    ("threshold before a trajectory", "fresh:/set_threshold", dict(threshold_scale=1.02, **LAYER_ARGS), r"No trajectory yet"),
    ("export before a trajectory", "fresh:/export", {}, r"No trajectory yet"),
    ("scrub before a trajectory", "fresh:/scrub", dict(step=1, **LAYER_ARGS), r"No trajectory yet"),
    ("run before a trajectory", "fresh:/run_to_end", dict(threshold_scale=1.0, **LAYER_ARGS), r"No trajectory yet"),
    ("compare before a trajectory", "fresh:/compare_scales", dict(threshold_scale=1.02), r"No trajectory yet"),
    ("ANN compare before a trajectory", "fresh:/compare_ann", dict(threshold_scale=1.0), r"No trajectory yet"),
    # actions on a running trajectory (2 of 6 steps taken)
    ("zero steps per click", "/step", dict(n_steps=0, threshold_scale=1.0, **LAYER_ARGS), r"[Ss]teps per click must be"),
    ("negative steps per click", "/step", dict(n_steps=-3, threshold_scale=1.0, **LAYER_ARGS), r"[Ss]teps per click must be"),
    ("10^9 steps per click", "/step", dict(n_steps=10 ** 9, threshold_scale=1.0, **LAYER_ARGS), r"[Ss]teps per click must be"),
    ("NaN steps per click", "/step", dict(n_steps=math.nan, threshold_scale=1.0, **LAYER_ARGS), r"[Ss]teps per click must be"),
    ("NaN threshold slider", "/set_threshold", dict(threshold_scale=math.nan, **LAYER_ARGS), r"[Tt]hreshold scale must be"),
    ("-inf threshold slider", "/set_threshold", dict(threshold_scale=-math.inf, **LAYER_ARGS), r"[Tt]hreshold scale must be"),
    ("string threshold slider", "/set_threshold", dict(threshold_scale="1.0x", **LAYER_ARGS), r"[Tt]hreshold scale must be"),
    ("scrub beyond the end", "/scrub", dict(step=99, **LAYER_ARGS), r"between 1 and 2"),
    ("scrub to step 0", "/scrub", dict(step=0, **LAYER_ARGS), r"between 1 and 2|must be"),
    ("scrub to a fraction", "/scrub", dict(step=1.5, **LAYER_ARGS), r"whole number|must be"),
    ("select an unknown layer", "/select_layer", dict(layer="no.such.layer", raster_mode="step", neurons=[]), r"not a layer"),
    ("neuron out of range", "/select_layer", dict(layer=LAYER, raster_mode="step", neurons=[999]), r"[Nn]euron"),
    ("compare at a NaN scale", "/compare_scales", dict(threshold_scale=math.nan), r"[Tt]hreshold scale must be"),
    # numbers that overflow, and inputs too long to echo back
    ("infinite neuron", "/select_layer", dict(layer=LAYER, raster_mode="step", neurons=[math.inf]), r"integers 0\.\.63"),
    ("10^400 neuron", "/select_layer", dict(layer=LAYER, raster_mode="step", neurons=[10 ** 400]), r"integers 0\.\.63"),
    ("1 MB sampler", "/new_trajectory", new_args(sampler="x" * 1_000_000), r"got 'x{20,80}… \(1,000,002 characters\)"),
    ("1 MB layer", "/select_layer", dict(layer="y" * 1_000_000, raster_mode="step", neurons=[]), r"characters\) is not a layer of tiny-sdm; its layers"),
    ("quoted value keeps its quotes", "/new_trajectory", new_args(sampler="x"), r"got 'x'$"),
]


def test_at_least_30_bad_inputs_are_covered():
    assert len(BAD) >= 30 and len({b[0] for b in BAD}) == len(BAD)


@pytest.mark.parametrize("what,endpoint,kwargs,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_error_and_the_server_answers_the_next_request(served, monkeypatch, what, endpoint,
                                                                              kwargs, pattern):
    import httpx._content
    from gradio_client.exceptions import AppError

    # httpx refuses to encode NaN and inf; a raw JSON client need not: send them as the literal tokens
    monkeypatch.setattr(httpx._content, "json_dumps", lambda obj, **kw: json.dumps(obj, **{**kw, "allow_nan": True}))

    c = client(served, files=False)
    if not endpoint.startswith("fresh:"):
        start(c, steps=6)
        c.predict(n_steps=1, threshold_scale=1.0, api_name="/step", **LAYER_ARGS)
    endpoint = endpoint.removeprefix("fresh:")
    with pytest.raises(AppError) as err:
        c.predict(api_name=endpoint, **kwargs)
    msg = str(err.value)
    assert "Internal error" not in msg and "Traceback" not in msg, msg
    assert len(msg) < 400, f"{what}: a {len(msg)}-character message"
    assert str(FIXTURES) not in msg, f"{what}: the message shows the server's path"
    assert re.search(pattern, msg), f"{what}: unclear message {msg!r}"
    # the same client goes on: a good request is answered
    r = start(c, seed=7, steps=3)
    assert info(r)["step"] == 1 and info(r)["seed"] == 7


def _run_alone_or_not(c, spec) -> dict:
    r = start(c, checkpoint=spec["checkpoint"], seed=spec["seed"], steps=6, scale=spec["scale"], grid=4)
    r = c.predict(n_steps=2, threshold_scale=spec["scale"], api_name="/step", **LAYER_ARGS)
    mid = info(r)
    r = c.predict(threshold_scale=spec["scale"], api_name="/run_to_end", **LAYER_ARGS)
    end = info(r)
    img = r[app.VIEW_KEYS.index("img_x0") - 1]
    return {"mid": mid["sample_digest"], "end": end["sample_digest"], "x0": end["x0_digest"],
            "done": end["done"], "checkpoint": end["checkpoint"], "seed": end["seed"],
            "image": np.asarray(iio.imread(img))}


def test_eight_concurrent_sessions_each_get_exactly_their_solo_images(served):
    names = ["tiny-sdm", "tiny-sdm-vanilla", "tiny-ann"]
    specs = [{"checkpoint": names[i % 3], "seed": 100 + i, "scale": round(0.95 + 0.013 * i, 3)} for i in range(8)]
    results: dict[int, dict] = {}
    clients: dict[int, object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(specs))

    def worker(i):
        try:
            barrier.wait(timeout=60)
            clients[i] = client(served)
            results[i] = _run_alone_or_not(clients[i], specs[i])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(results) == len(specs)
    for i, spec in enumerate(specs):      # then each alone, one after the other (a new trajectory of the same tab)
        alone = _run_alone_or_not(clients[i], spec)
        got = results[i]
        assert got["done"] and got["checkpoint"] == spec["checkpoint"] and got["seed"] == spec["seed"]
        for k in ("mid", "end", "x0"):
            assert got[k] == alone[k], (i, spec, k)
        np.testing.assert_array_equal(got["image"], alone["image"])
    # and the sessions really differ from each other
    assert len({r["end"] for r in results.values()}) == len(specs)


def test_broken_checkpoints_show_a_message_while_the_others_work(tmp_path):
    """A truncated weights file and a folder without config.json: both are listed, each says what is wrong,
    and the good checkpoint keeps serving, through the launched app."""
    from gradio_client.exceptions import AppError
    from sdm.explorer import ModelRegistry

    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "good")
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "truncated")
    w = tmp_path / "truncated" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:2000])
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "no-config")
    (tmp_path / "no-config" / "config.json").unlink()
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "garbage")
    (tmp_path / "garbage" / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 100)
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "listy")
    (tmp_path / "listy" / "card.json").write_text("[1, 2, 3]")

    demo = app.build_demo(app.Explorer(ModelRegistry(tmp_path)))
    with serve_demo(demo, **app.launch_kwargs()) as url:
        c = client(url)
        for name, needle in [("truncated", "corrupted or truncated"), ("garbage", "corrupted or truncated"),
                             ("no-config", "missing config.json"), ("listy", "must be a JSON object")]:
            summary = c.predict(checkpoint=name, layer=LAYER, api_name="/checkpoint_info")[0]
            assert "cannot be loaded" in summary and needle in summary, summary
            assert str(tmp_path) not in summary, summary
            with pytest.raises(AppError, match=f"{name}.*cannot be loaded"):
                start(c, checkpoint=name)
            r = start(c, checkpoint="good", seed=3, steps=4)
            assert info(r)["checkpoint"] == "good" and info(r)["step"] == 1


def test_invalid_input_changes_no_state(served):
    """Every argument is checked before anything changes: a bad neuron list neither advances the trajectory nor
    replaces the session."""
    from gradio_client.exceptions import AppError

    c = client(served, files=False)
    start(c, seed=5, steps=6)
    r = c.predict(n_steps=1, threshold_scale=1.0, api_name="/step", **LAYER_ARGS)
    before = info(r)
    assert before["steps_done"] == 2
    with pytest.raises(AppError, match="not recorded"):
        c.predict(n_steps=3, threshold_scale=1.0, api_name="/step", layer=LAYER, raster_mode="step", neurons=[999])
    with pytest.raises(AppError, match="not recorded"):
        c.predict(**new_args(seed=777, neurons=[999]), api_name="/new_trajectory")
    with pytest.raises(AppError, match="[Rr]aster mode"):
        c.predict(threshold_scale=1.0, api_name="/run_to_end", layer=LAYER, raster_mode="3d", neurons=[])
    r = c.predict(layer=LAYER, raster_mode="step", neurons=[], api_name="/select_layer")
    r = c.predict(step=2, api_name="/scrub", **LAYER_ARGS)
    after = info(r, app.SCRUB_KEYS)
    assert after["seed"] == 5 and after["steps_done"] == 2 and after["sample_digest"] == before["sample_digest"]
