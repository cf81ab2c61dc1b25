"""The words that teach, shown beside the panels (markdown): what x_t, x̂₀ and ε̂ are, threshold guidance, the spike
raster, membrane potentials, firing rates, TSM, energy, and how the spiking UNet works, with a ten-minute lesson plan
that walks through the lesson presets (``presets.lesson_presets``). Gradio-free: app.py places them.
"""
from __future__ import annotations

__all__ = ["TITLE", "INTRO", "TEACH_IMAGES", "TEACH_THRESHOLD", "TEACH_RASTER", "TEACH_MEMBRANE", "TEACH_RATE",
           "TEACH_TSM", "TEACH_ENERGY", "ARCHITECTURE", "NO_CHECKPOINTS"]

TITLE = "**SDM Explorer** · spiking diffusion"
NO_CHECKPOINTS = ("⚠ **No checkpoints found** (in checkpoints/, or the folder $SDM_CHECKPOINTS names). Train one: "
                  "`python -m sdm.train ...`")

INTRO = """A diffusion model turns noise into an image one **diffusion step t** at a time (t = 999 … 0). Here the
denoiser is a **spiking neural network**: its neurons talk in binary spikes, over **T spiking steps τ** within each
diffusion step. Press **Step** and watch."""


TEACH_IMAGES = """**x_t** is the noisy image the denoiser sees at diffusion step t; after the last step it is the
generated image. **x̂₀** is the denoiser's current guess of the clean image, x̂₀ = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t, and
**ε̂** the noise it thinks is in x_t (gray = 0). The filmstrip shows x_t (top) and x̂₀ (bottom) along the way."""

TEACH_THRESHOLD = """**Threshold guidance** multiplies every neuron's firing threshold by the scale s at sampling
time (no retraining). s < 1: neurons fire more easily; s > 1: less easily, so fewer spikes on average (a layer can
still go the other way). Move the slider to re-run the viewed step: x̂₀ at s appears beside x̂₀ at 1.0; **Continue
from here** carries the trajectory on with the new scale. **T** sets how many spiking steps τ each denoiser call
runs: more steps, more spikes and energy, usually a cleaner x̂₀."""

TEACH_RASTER = """A **spike raster**: one row per recorded neuron, one tick per spike, over the T spiking steps τ of
one denoiser call (or of every diffusion step, side by side, in *whole trajectory* mode). Only a random subset of
each layer's neurons is recorded: the label says how many."""

TEACH_MEMBRANE = """The **membrane potential** v of each neuron collects input current and leaks; when v crosses the
threshold θ·s (the bold tick on the colour bar) the neuron spikes and v resets to 0. In the traces, stars mark the
spikes and the line drops to the reset value."""

TEACH_RATE = """**Firing rate**: the fraction of a layer's neurons that spike per spiking step τ. Fewer spikes means
fewer synaptic operations, which means less energy. The bars beside the image compare the slider's scale with 1.0
(hollow bars)."""

TEACH_TSM = """**TSM** (temporal-wise spiking mechanism) gives every layer one learned weight per spiking step τ
that scales its input current, so the network can treat early and late steps differently (Cao et al. 2024,
Eq. 16). Run at a larger T than it was trained for, the steps beyond repeat the last learned weight."""

TEACH_ENERGY = """An SNN layer only **accumulates** when a spike arrives (≈ 0.9 pJ per synaptic operation, SOP);
an ANN **multiplies and accumulates** every input (≈ 4.6 pJ per MAC, 45 nm figures). The SOPs are counted from the
actual spikes of this trajectory, at its T."""

ARCHITECTURE = """
**The spiking UNet** predicts the noise ε̂ in x_t:

1. **Direct encoding**: the first convolution reads the analog pixels of x_t; its output is the same input
   current at each of the T spiking steps τ.
2. **Spiking layers**: every block is *LIF neuron → convolution → batch norm*. A leaky integrate-and-fire neuron
   keeps a membrane potential U[τ] = β·U[τ−1] + I[τ] and emits a spike when U crosses the threshold θ (then
   resets).
   Only spikes (0/1) travel between layers, so convolutions become additions.
3. **Down / mid / up path** with skip connections, as in the DDPM UNet; the diffusion step t enters every block
   as an extra input current (a small time-embedding MLP).
4. **Readout**: the output layer's spikes are averaged over the T spiking steps and a last convolution gives ε̂.
5. **TSM** (Eq. 16) scales the input current of each layer at each spiking step τ by a learned weight p[τ].
6. **Threshold guidance** (Eq. 18) multiplies every threshold θ by s at sampling time only.

**Sampling**: DDIM (deterministic, few steps) or DDPM (stochastic, adds fresh noise each step) turns ε̂ into the
next, less noisy x. Every random number comes from the seed, so the same seed gives the same noise: two runs that
differ only in the threshold scale are directly comparable.

**Lesson plan (10 minutes)**, in the *Classroom* view: ① Noise to image: New trajectory, Step a few times, then Run
to end. ② Move the threshold slider: x̂₀ at s beside x̂₀ at 1.0, and the spikes change. ③ T = 1, 2, 4, 8 spiking
steps: quality, spikes and energy (a model is best at the T it was trained with: at T = 8 fmnist-sdm-t4 spends twice
the energy for a worse FID, 95.6 against 69.8). ④ DDIM 10, 20, 50, 100 steps (more steps help ours: FID 81.2, 69.8,
68.1 at 20, 50, 100). Then, in the full explorer: ⑤ scrub back and
watch x̂₀ sharpen; ⑥ membrane potentials of one layer; ⑦ energy against the ANN; ⑧ a model without TSM, and the
ANN.
"""
