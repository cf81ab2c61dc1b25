"""SDM Explorer: Spiking Diffusion Models (Cao et al. 2024) with probes, energy and a stepping API."""
from .config import ModelConfig, DiffusionConfig
from .unet import SpikingUNet, count_parameters
from .scheduling_ddpm import DDPMScheduler
from .scheduling_ddim import DDIMScheduler
from .pipeline import SpikingDiffusionPipeline, StepOutput, load_pipeline, list_checkpoints
from .probes import Probe, ProbeFrame
from .energy import EnergyReport

__all__ = [
    "ModelConfig", "DiffusionConfig", "SpikingUNet", "count_parameters", "DDPMScheduler", "DDIMScheduler",
    "SpikingDiffusionPipeline", "StepOutput", "load_pipeline", "list_checkpoints", "Probe", "ProbeFrame",
    "EnergyReport",
]
__version__ = "0.1.0"
