"""sdm.explorer.validation: every user-facing range in one place, with messages that name the input and the fix."""
from __future__ import annotations

import math

import pytest

from sdm.explorer import validation as v


@pytest.mark.parametrize("fn, good, expect", [
    (v.check_seed, 7.0, 7), (v.check_seed, v.MAX_SEED, v.MAX_SEED), (v.check_num_steps, 50, 50),
    (v.check_step_count, 10.0, 10), (v.check_scale, 0.9, 0.9), (v.check_scale, 1.0999999, 1.1),
    (v.check_grid, 16.0, 16), (v.check_sampler, " DDPM ", "ddpm"), (v.check_raster_mode, None, "step"),
    (v.check_raster_mode, "trajectory", "trajectory"),
])
def test_good_values_are_normalised(fn, good, expect):
    out = fn(good)
    assert out == expect and type(out) is type(expect)


@pytest.mark.parametrize("fn, bad, needle", [
    (v.check_seed, -1, "seed must be between 0 and 2147483647"),
    (v.check_seed, 2.5, "whole number"),
    (v.check_seed, "abc", "'abc' (a str)"),
    (v.check_seed, True, "seed must be an integer"),
    (v.check_seed, 10 ** 400, "seed must be"),
    (v.check_num_steps, 0, "number of steps must be between 1 and 1000"),
    (v.check_num_steps, math.nan, "finite"),
    (v.check_step_count, 1001, "steps per click"),
    (v.check_scale, 1.2, "threshold scale must be between 0.9 and 1.1, got 1.2 (1.0 = no guidance)"),
    (v.check_scale, math.inf, "finite"),
    (v.check_scale, None, "threshold scale must be a number"),
    (v.check_grid, 3, "grid size must be one of 1, 4, 16"),
    (v.check_grid, math.inf, "grid size"),
    (v.check_grid, "4", "grid size"),
    (v.check_sampler, "euler", "sampler must be one of ddim, ddpm"),
    (v.check_raster_mode, "both", "raster mode"),
])
def test_bad_values_name_the_input_and_the_range(fn, bad, needle):
    with pytest.raises(ValueError, match=None) as e:
        fn(bad)
    assert needle in str(e.value)


def test_a_huge_input_is_cut_in_the_message():
    with pytest.raises(ValueError) as e:
        v.check_sampler("x" * 1_000_000)
    assert len(str(e.value)) < 200 and "1,000,002 characters" in str(e.value)
    assert v.shown("abc") == "'abc'"


def test_neurons_are_whole_recorded_indices():
    assert v.check_neurons(None, 64) == [] and v.check_neurons("", 64) == []
    assert v.check_neurons([3, 3.0, "5", 0], 64) == [3, 5, 0]
    assert v.check_neurons(7, 64) == [7]
    for bad, needle in ([math.inf], "integers 0..63"), ([10 ** 400], "integers"), ([1.5], "integers"), \
                       (["x"], "integers"), ([True], "integers"), ([64], "not recorded"), ([-1], "not recorded"), \
                       (list(range(1000)), "at most"):
        with pytest.raises(ValueError, match=needle):
            v.check_neurons(bad, 64)


def test_layers():
    layers = ["a", "b"]
    assert v.check_layer(layers, None) == "a" and v.check_layer(layers, "b") == "b" and v.check_layer([], "") == ""
    with pytest.raises(ValueError, match="layer 'c' is not a layer of m; its layers are a, b"):
        v.check_layer(layers, "c", "m")


def test_samplers_are_the_pipelines():
    from sdm.pipeline import SAMPLERS
    assert v.SAMPLERS is SAMPLERS


def test_spiking_time_steps():
    assert v.spiking_step_choices(4) == [1, 2, 4, 8] and v.spiking_step_choices(3) == [1, 2, 3, 4, 8]
    assert v.check_spiking_steps(None, 4) == 4 and v.check_spiking_steps("", 3) == 3 and v.check_spiking_steps(8.0, 4) == 8
    assert v.check_spiking_steps(3, 3) == 3
    for bad in (3, 16, 0, -1, "8", True, float("nan"), [8]):
        with pytest.raises(ValueError, match=r"spiking time steps T must be one of 1, 2, 4, 8 \(trained: 4\)"):
            v.check_spiking_steps(bad, 4)
    assert v.check_spiking_steps(8, 1, spiking=False) == 1 and v.check_spiking_steps(None, 1, spiking=False) == 1
