"""Two DiTs split by noise level (Wan 2.2 A14B) behind one module.

    experts = NoiseExperts(high, low, boundary_ratio=0.875)
    experts(hidden_states=x, timestep=t, ...)  # high's output where t >= 875, low's below

``WanPipeline`` switches from ``transformer`` to ``transformer_2`` once the scheduler's timestep
falls below ``boundary_ratio * num_train_timesteps``; the DiT's ``timestep`` argument is that
timestep, so routing on it inside the module makes every caller (the sampler's Euler loop, an
adapter's ``predict_velocity``, validation) sample with both experts exactly as the pipeline does,
without knowing there are two. A batch whose timesteps straddle the boundary is refused: each
expert sees only its own noise levels.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000  # the flow schedulers' timestep scale (timestep = 1000 * sigma)


class NoiseExperts(torch.nn.Module):
    def __init__(self, high: torch.nn.Module, low: torch.nn.Module, boundary_ratio: float):
        super().__init__()
        self.high = high
        self.low = low
        self.boundary_ratio = boundary_ratio

    def pick(self, timestep: torch.Tensor) -> torch.nn.Module:
        """The expert for ``timestep`` (``[B]`` or a scalar; every entry on one side of the boundary)."""
        above = timestep.float() >= self.boundary_ratio * NUM_TRAIN_TIMESTEPS
        if bool(above.all()):
            return self.high
        if not bool(above.any()):
            return self.low
        raise ValueError(
            f"a batch with timesteps on both sides of the experts' boundary {self.boundary_ratio}: "
            "each expert takes only its own noise levels"
        )

    def forward(self, *args, timestep: torch.Tensor, **kwargs):
        return self.pick(timestep)(*args, timestep=timestep, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        return self.high.dtype
