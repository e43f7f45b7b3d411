"""PCM schedule math: base schedules, solver grid and phases, phase schedule parsing, loss, sampler."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

from fastvideo.distill.pcm import (
    PCMFlowScheduler,
    SolverGrid,
    base_sigmas,
    parse_phase_schedule,
    phases_at,
    pseudo_huber,
)


def grid_of(n: int) -> SolverGrid:
    """A grid whose n points are n, n-1, ..., 1 (divided by n): easy to read off by hand."""
    return SolverGrid.build(torch.arange(n, 0, -1, dtype=torch.float32) / n, n)


@pytest.mark.parametrize("kind", ["linear_quadratic", "shift"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_base_sigmas_contract(kind, shift):
    s = base_sigmas(kind, shift=shift)
    assert s.shape == (1000,) and s.dtype == torch.float32
    assert s[0].item() == pytest.approx(1.0, abs=1e-7)
    assert (s > 0).all() and (s[1:] < s[:-1]).all()


def test_shift_formula():
    s = base_sigmas("shift", num_train_timesteps=4, shift=3.0)
    u = torch.tensor([1.0, 0.75, 0.5, 0.25])
    torch.testing.assert_close(s, 3 * u / (1 + 2 * u))
    torch.testing.assert_close(base_sigmas("shift", num_train_timesteps=4), u)


def test_linear_quadratic_matches_diffusers():
    s = base_sigmas("linear_quadratic", num_train_timesteps=1000, linear_threshold=0.025, linear_range=0.5)
    ref = torch.tensor(linear_quadratic_schedule(1000, 0.025, linear_steps=500), dtype=torch.float32)
    torch.testing.assert_close(s, ref)
    # The linear part ends at 1 - threshold; the last value stays above 0.
    assert s[500].item() == pytest.approx(1 - 0.025, abs=1e-6)
    assert 0 < s[-1].item() < 0.01


def test_base_sigmas_errors():
    with pytest.raises(ValueError, match="unknown schedule"):
        base_sigmas("cosine")
    with pytest.raises(ValueError, match="linear_range"):
        base_sigmas("linear_quadratic", linear_range=1.0)


def test_grid_picks_documented_indices():
    base = base_sigmas("shift", shift=2.0)
    grid = SolverGrid.build(base, 8)
    assert grid.num_points == 8 and grid.sigmas.shape == (9,)
    torch.testing.assert_close(grid.sigmas[:-1], base[[0, 125, 250, 375, 500, 625, 750, 875]])
    assert grid.sigmas[-1].item() == 0.0 and (grid.sigmas[1:] < grid.sigmas[:-1]).all()
    # Non-divisible sizes floor: linspace(0, 10, 3, endpoint=False) = [0, 3.33, 6.67].
    small = torch.arange(10, 0, -1, dtype=torch.float32)
    assert SolverGrid.build(small, 3).sigmas.tolist() == [10.0, 7.0, 4.0, 0.0]
    with pytest.raises(ValueError):
        SolverGrid.build(small, 11)


def test_phases_by_hand():
    grid = grid_of(8)
    assert grid.phase_starts(1) == [0]
    assert all(grid.phase_end(i, 1) == 8 for i in range(8))
    assert grid.phase_starts(2) == [0, 4]
    assert [grid.phase_end(i, 2) for i in range(8)] == [4, 4, 4, 4, 8, 8, 8, 8]
    assert grid.phase_starts(4) == [0, 2, 4, 6]
    assert [grid.phase_end(i, 4) for i in range(8)] == [2, 2, 4, 4, 6, 6, 8, 8]
    assert grid_of(10).phase_starts(4) == [0, 2, 5, 7]
    with pytest.raises(ValueError):
        grid.phase_starts(9)
    with pytest.raises(ValueError):
        grid.phase_end(8, 2)


def test_sampling_sigmas_by_hand():
    grid = grid_of(16)
    got = grid.sampling_sigmas(8)
    assert got.tolist() == [(16 - k) / 16 for k in range(0, 16, 2)] + [0.0]
    assert grid.sampling_sigmas(1).tolist() == [1.0, 0.0]
    assert torch.equal(grid.sampling_sigmas(16), grid.sigmas)
    with pytest.raises(ValueError):
        grid.sampling_sigmas(17)


def test_parse_phase_schedule_and_phases_at():
    assert parse_phase_schedule("4000-1") == [(4000, 1)]
    schedule = parse_phase_schedule("4000-1, 8000-2")
    assert schedule == [(4000, 1), (8000, 2)]
    assert [phases_at(schedule, s) for s in (0, 3999, 4000, 7999, 8000, 10**6)] == [1, 1, 2, 2, 2, 2]
    for bad in ["", "4000", "4000-", "a-1", "4000-1,", "4000-0", "4000-1-2", "8000-1,4000-2", "-1-2"]:
        with pytest.raises(ValueError):
            parse_phase_schedule(bad)
    with pytest.raises(ValueError):
        phases_at([], 0)


def test_pseudo_huber():
    c = 0.001
    tiny = torch.full((4,), 1e-5)  # float32: needs the cancellation-free form
    assert pseudo_huber(tiny, torch.zeros(4), c).item() == pytest.approx(0.5 * 1e-10 / c, rel=1e-3)
    big = torch.tensor([10.0, -20.0])
    assert pseudo_huber(big, torch.zeros(2), c).item() == pytest.approx(15.0, rel=1e-4)
    pred, target = torch.tensor([3.0, 1.0]), torch.tensor([-1.0, 1.0])
    expected = ((math.sqrt(16 + 0.25) - 0.5) + 0.0) / 2
    assert pseudo_huber(pred, target, 0.5).item() == pytest.approx(expected)


@pytest.mark.parametrize("invert", [False, True], ids=["velocity", "mochi"])
def test_scheduler_matches_hand_euler(invert):
    sched = PCMFlowScheduler(schedule="shift", shift=3.0, num_euler_timesteps=16, invert_sigmas=invert)
    sched.set_timesteps(8)
    sigmas = SolverGrid.build(base_sigmas("shift", shift=3.0), 16).sampling_sigmas(8)
    torch.testing.assert_close(sched.sigmas, sigmas)
    torch.testing.assert_close(sched.timesteps, ((1 - sigmas[:-1]) if invert else sigmas[:-1]) * 1000)
    assert sched.sigmas.dtype == torch.float32 and len(sched) == 1000

    def velocity(x, sigma):
        return torch.sin(x) * sigma + 0.5

    x = expected = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(sched.timesteps):
        assert sched.scale_model_input(x, t) is x
        sigma = 1 - t / 1000 if invert else t / 1000
        out = -velocity(x, sigma) if invert else velocity(x, sigma)  # Mochi's DiT predicts -v
        x = sched.step(out, t, x).prev_sample
        expected = expected + (sigmas[i + 1] - sigmas[i]) * velocity(expected, sigmas[i])
    torch.testing.assert_close(x, expected)
    with pytest.raises(RuntimeError):
        sched.step(x, 0, x)


def test_scheduler_takes_only_the_count_of_pipeline_sigmas():
    """MochiPipeline calls set_timesteps(sigmas=its own schedule): the grid's points are used instead."""
    sched = PCMFlowScheduler(num_euler_timesteps=16)
    sched.set_timesteps(sigmas=[0.9, 0.5, 0.2, 0.1])
    torch.testing.assert_close(sched.sigmas, sched.grid.sampling_sigmas(4))
    sched.step(torch.zeros(1), sched.timesteps[0], torch.zeros(1))
    sched.set_begin_index(0)
    assert sched.step_index == 0 and sched.begin_index == 0


def test_scheduler_needs_set_timesteps():
    with pytest.raises(RuntimeError, match="set_timesteps"):
        PCMFlowScheduler().step(torch.zeros(1), 0, torch.zeros(1))


def test_scheduler_round_trip(tmp_path):
    sched = PCMFlowScheduler(linear_threshold=0.025, linear_range=0.5, num_euler_timesteps=20)
    sched.save_pretrained(tmp_path)
    loaded = PCMFlowScheduler.from_pretrained(tmp_path)
    public = {k: v for k, v in sched.config.items() if not k.startswith("_")}
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
    assert public["linear_threshold"] == 0.025 and public["num_euler_timesteps"] == 20
    for s in (sched, loaded):
        s.set_timesteps(4)
    assert torch.equal(loaded.sigmas, sched.sigmas)
    assert (tmp_path / "scheduler_config.json").exists()
