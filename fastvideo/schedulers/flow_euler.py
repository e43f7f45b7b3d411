"""Deterministic Euler steps over chosen flow-matching noise levels, behind diffusers' scheduler API: the base
of the schedulers a distilled folder names (PCM's solver grid, DMD2's few levels)."""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput


class FlowEulerScheduler(SchedulerMixin):
    """Deterministic Euler steps over noise levels a subclass chooses (``sampling_sigmas``), behind diffusers'
    scheduler API. With ``invert_sigmas`` (Mochi's convention, as ``FlowMatchEulerDiscreteScheduler(
    invert_sigmas=True)``) the timesteps are ``1000 * (1 - sigma)`` and the model output is ``-v``; else
    ``1000 * sigma`` and ``v = noise - x0``. The subclass's config holds ``num_train_timesteps`` and
    ``invert_sigmas``."""

    config_name = "scheduler_config.json"
    order = 1

    def _init_state(self) -> None:
        self.init_noise_sigma = 1.0
        self.sigmas: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index = 0

    def sampling_sigmas(self, num_steps: int) -> torch.Tensor:
        """``[num_steps + 1]`` descending noise levels ending at 0."""
        raise NotImplementedError

    @property
    def step_index(self) -> int | None:
        """Index of the sigma the next ``step`` starts from (None before ``set_timesteps``)."""
        return self._step_index

    @property
    def begin_index(self) -> int:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next ``step`` at ``sigmas[begin_index]`` (pipelines call this with 0)."""
        self._begin_index = begin_index
        if self.sigmas is not None:
            self._step_index = begin_index

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas=None,
        **_ignored,
    ) -> None:
        """Prepare ``num_inference_steps`` (or ``len(sigmas)``) Euler steps on this scheduler's levels."""
        if num_inference_steps is None:
            if sigmas is None:
                raise ValueError("set_timesteps needs num_inference_steps or sigmas")
            num_inference_steps = len(sigmas)
        self.sigmas = self.sampling_sigmas(num_inference_steps).to(device=device, dtype=torch.float32)
        levels = 1.0 - self.sigmas[:-1] if self.config.invert_sigmas else self.sigmas[:-1]
        self.timesteps = levels * self.config.num_train_timesteps
        self.num_inference_steps = num_inference_steps
        self._step_index = self._begin_index = 0

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Flow matching feeds the sample to the model unscaled."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        return_dict: bool = True,
        **_ignored,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One Euler step from ``sigmas[i]`` to ``sigmas[i + 1]`` with the model's output.

        The step index, not ``timestep``, selects the sigma pair (``timestep`` is accepted for the
        diffusers calling convention). The update runs in float32 and returns ``sample``'s dtype.
        """
        if self._step_index is None:
            raise RuntimeError("call set_timesteps() before step()")
        if self._step_index >= len(self.sigmas) - 1:
            raise RuntimeError(f"all {self.num_inference_steps} steps are done; call set_timesteps() again")
        sigma, sigma_next = self.sigmas[self._step_index], self.sigmas[self._step_index + 1]
        velocity = -model_output.float() if self.config.invert_sigmas else model_output.float()
        prev = (sample.float() + (sigma_next - sigma) * velocity).to(sample.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
