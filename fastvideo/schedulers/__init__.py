"""Inference schedulers that saved pipeline folders name; importable without training code.

from fastvideo.schedulers import PCMFlowScheduler
"""

from fastvideo.schedulers.pcm import PCMFlowScheduler, SolverGrid, base_sigmas

__all__ = ["PCMFlowScheduler", "SolverGrid", "base_sigmas"]
