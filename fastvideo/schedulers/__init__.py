"""Inference schedulers that saved pipeline folders name; importable without training code.

from fastvideo.schedulers import PCMFlowScheduler, FewStepFlowScheduler
"""

from fastvideo.schedulers.few_step import FewStepFlowScheduler
from fastvideo.schedulers.flow_euler import FlowEulerScheduler
from fastvideo.schedulers.pcm import PCMFlowScheduler, SolverGrid, base_sigmas

__all__ = ["FewStepFlowScheduler", "FlowEulerScheduler", "PCMFlowScheduler", "SolverGrid", "base_sigmas"]
