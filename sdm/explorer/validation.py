"""The explorer's one validator: every argument that reaches it from a user (the app's widgets or its HTTP API) is
checked here, once, before any state changes, with a message that names the input, its allowed range and what was
sent (cut to about 80 characters).

The library checks a value where a library caller hands it in (``SpikingDiffusionPipeline``'s public methods,
``sdm.neurons``); the explorer checks its narrower rules here (threshold scale 0.90-1.10 within the library's
"finite and > 0"; the spiking time steps T offered, ``check_spiking_steps``, on top of ``sdm.neurons.check_time_steps``)
and then calls the pipeline's unchecked ``run_steps`` / ``run_denoiser``: each value is checked once.
"""
from __future__ import annotations

import math
import numbers

from ..neurons import check_time_steps
from ..pipeline import SAMPLERS

__all__ = [
    "SAMPLERS", "GRID_SIZES", "SCALE_MIN", "SCALE_MAX", "SCALE_STEP", "MAX_STEPS", "MAX_SEED", "MAX_NEURONS",
    "RASTER_MODES", "SPIKING_STEPS", "STEP_PRESETS", "shown", "check_number", "check_seed", "check_num_steps",
    "check_step_count", "check_scale", "check_grid", "check_sampler", "check_layer", "check_raster_mode",
    "check_neurons", "spiking_step_choices", "check_spiking_steps",
]

GRID_SIZES = (1, 4, 16)
SCALE_MIN, SCALE_MAX, SCALE_STEP = 0.90, 1.10, 0.01      # the step: one arrow-key press on the slider
MAX_STEPS = 1000
MAX_SEED = 2 ** 31 - 1
MAX_NEURONS = 64                    # neurons recorded per layer (of image 0)
RASTER_MODES = ("step", "trajectory")
SPIKING_STEPS = (1, 2, 4, 8)          # spiking time steps T offered at inference (plus the model's own)
STEP_PRESETS = (10, 20, 50, 100)    # DDIM steps of the classroom presets (paper Table 6: spiking models best near 50)
MAX_SHOWN = 80                      # characters of a rejected value echoed back in a message


def shown(value, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to about ``limit`` characters (an error never echoes a 1 MB input back)."""
    try:
        r = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not hide the real message
        r = f"<{type(value).__name__}>"
    if len(r) <= limit:
        return r
    return f"{r[:limit]}… ({len(r):,} characters)"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_number(name: str, value, lo: float, hi: float, integer: bool, hint: str = "") -> float | int:
    """A finite real number in [lo, hi] (a whole one if ``integer``); anything else raises a ValueError that names
    ``name``, the range and the value. Returns an int or a float."""
    kind = "an integer" if integer else "a number"
    rng = f"between {_fmt(lo)} and {_fmt(hi)}"
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        got = f"{shown(value)} (a {type(value).__name__})" if isinstance(value, str) else shown(value)
        raise ValueError(f"{name} must be {kind} {rng}, got {got}{hint}")
    try:
        v = float(value)
    except (OverflowError, ValueError):
        raise ValueError(f"{name} must be {kind} {rng}, got {shown(value)}{hint}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number {rng}, got {shown(value)}{hint}")
    if integer and not v.is_integer():
        raise ValueError(f"{name} must be a whole number {rng}, got {shown(value)}{hint}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be {rng}, got {shown(value)}{hint}")
    return int(v) if integer else v


def check_seed(seed) -> int:
    """A seed: whole number in [0, 2^31 - 1]."""
    return check_number("seed", seed, 0, MAX_SEED, True)


def check_num_steps(num_steps) -> int:
    """Inference steps of a trajectory: whole number in [1, 1000]."""
    return check_number("number of steps", num_steps, 1, MAX_STEPS, True)


def check_step_count(n) -> int:
    """Steps to take at once (Step, Step x10): whole number in [1, 1000]."""
    return check_number("steps per click", n, 1, MAX_STEPS, True)


def check_scale(threshold_scale) -> float:
    """Threshold-guidance scale: a finite number in [0.90, 1.10], rounded to 6 decimals."""
    s = check_number("threshold scale", threshold_scale, SCALE_MIN, SCALE_MAX, False, " (1.0 = no guidance)")
    return round(s, 6)


def check_grid(grid) -> int:
    """Images per trajectory: 1, 4 or 16."""
    ok = isinstance(grid, numbers.Real) and not isinstance(grid, bool)
    try:
        ok = ok and math.isfinite(float(grid)) and float(grid) in GRID_SIZES
    except (OverflowError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"grid size must be one of {', '.join(map(str, GRID_SIZES))} images, got {shown(grid)}")
    return int(grid)


def check_sampler(sampler) -> str:
    """'ddim' or 'ddpm' (case-insensitive)."""
    s = sampler.strip().lower() if isinstance(sampler, str) else sampler
    if s not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} (DDIM or DDPM), got {shown(sampler)}")
    return s


def check_layer(layers: list[str], layer, checkpoint: str = "this model") -> str:
    """``layer`` if it is one of ``layers``; '' or None give the first layer ('' when there is none)."""
    if layer is None or layer == "":
        return layers[0] if layers else ""
    if not isinstance(layer, str) or layer not in layers:
        listed = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
        raise ValueError(f"layer {shown(layer)} is not a layer of {checkpoint}; its layers are {listed}")
    return layer


def check_raster_mode(mode) -> str:
    """'step' (None or '' too) or 'trajectory'."""
    if mode is None or mode == "":
        return "step"
    if mode not in RASTER_MODES:
        raise ValueError(f"raster mode must be 'step' or 'trajectory', got {shown(mode)}")
    return mode


def check_neurons(neurons, n: int) -> list[int]:
    """Indices of recorded neurons to trace: a list of whole numbers in [0, n-1] (duplicates dropped, order kept);
    None, '' or [] give []."""
    if neurons is None or neurons == "":
        return []
    if not isinstance(neurons, (list, tuple)):
        neurons = [neurons]
    if len(neurons) > 4 * MAX_NEURONS:
        raise ValueError(f"at most {MAX_NEURONS} neurons can be traced, got a list of {len(neurons)}")
    out = []
    for j in neurons:
        if isinstance(j, str):
            try:
                j = float(j.strip())
            except ValueError:
                raise ValueError(f"neuron indices must be integers 0..{n - 1}, got {shown(j)}") from None
        try:
            whole = isinstance(j, numbers.Real) and not isinstance(j, bool) and math.isfinite(float(j)) \
                and float(j).is_integer()
        except (OverflowError, ValueError):
            whole = False
        if not whole:
            raise ValueError(f"neuron indices must be integers 0..{n - 1}, got {shown(j)}")
        i = int(j)
        if not 0 <= i < n:
            raise ValueError(f"neuron {shown(j)} is not recorded: this layer records neurons 0..{n - 1}")
        out.append(i)
    return list(dict.fromkeys(out))


def spiking_step_choices(trained: int) -> list[int]:
    """The spiking time steps T offered for a model trained at ``trained``: 1, 2, 4, 8 and its own T."""
    return sorted(set(SPIKING_STEPS) | {int(trained)})


def check_spiking_steps(time_steps, trained: int, spiking: bool = True) -> int:
    """Spiking time steps T of a trajectory: one of ``spiking_step_choices(trained)`` (the library's rule,
    ``sdm.neurons.check_time_steps``, narrowed to the choices offered); None or '' give ``trained``. An ANN
    (``spiking=False``) has none: any accepted value gives 1."""
    if time_steps is None or time_steps == "":
        return int(trained) if spiking else 1
    choices = spiking_step_choices(trained)
    try:
        T = check_time_steps(time_steps)
    except ValueError:
        T = None
    if T not in choices:
        raise ValueError(f"spiking time steps T must be one of {', '.join(map(str, choices))} (trained: {trained}), "
                         f"got {shown(time_steps)}")
    return T if spiking else 1
