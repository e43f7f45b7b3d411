"""EMA: the update rule against a hand computation, start_step, swapping, state, and FSDP2 sharding.

The FSDP2 test spawns two gloo processes that train a small fully_shard-ed nn.Sequential and checks
that the gathered EMA equals the EMA of the gathered parameter sequence computed in one process.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from fastvideo.training.ema import EMA


def make_params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([[0.5], [-4.0]]))]


def set_values(params, value: float) -> None:
    with torch.no_grad():
        for p in params:
            p.fill_(value)


def test_update_matches_hand_computation():
    params = make_params()
    ema = EMA(params, decay=0.9)
    expected = [p.detach().clone() for p in params]
    for step, value in enumerate([3.0, -1.0, 10.0], start=1):
        set_values(params, value)
        ema.update(step)
        expected = [0.9 * e + 0.1 * value for e in expected]
    for got, want in zip(ema.state_dict().values(), expected, strict=True):
        torch.testing.assert_close(got, want)
    # First component by hand: 1 -> 1.2 -> 0.98 -> 1.882
    assert ema.state_dict()["0"][0].item() == pytest.approx(1.882)


def test_start_step_copies_until_then():
    params = make_params()
    ema = EMA(params, decay=0.5, start_step=2)
    for step, value in [(1, 4.0), (2, 8.0)]:
        set_values(params, value)
        ema.update(step)
        assert all(torch.equal(s, torch.full_like(s, value)) for s in ema.state_dict().values())
    set_values(params, 0.0)
    ema.update(3)
    assert all(torch.equal(s, torch.full_like(s, 4.0)) for s in ema.state_dict().values())


def test_named_parameters_skip_frozen_ones():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1].weight.requires_grad_(False)
    ema = EMA(model.named_parameters())
    assert list(ema.state_dict()) == ["0.weight", "0.bias", "1.bias"]
    assert list(EMA(model).state_dict()) == ["0.weight", "0.bias", "1.bias"]
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(ema.state_dict()[name], p) and ema.state_dict()[name] is not p


def test_swap_puts_ema_in_and_restores():
    model = nn.Linear(3, 2)
    ema = EMA(model.named_parameters(), decay=0.5)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    set_values(model.parameters(), 2.0)
    ema.update(1)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    averaged = {n: s.clone() for n, s in ema.state_dict().items()}
    for n in averaged:
        torch.testing.assert_close(averaged[n], 0.5 * original[n] + 1.0)

    x = torch.randn(4, 3)
    with ema.swap_into(model):
        for n, p in model.named_parameters():
            assert torch.equal(p, averaged[n])
        torch.testing.assert_close(model(x), x @ averaged["weight"].T + averaged["bias"])
    for n, p in model.named_parameters():
        assert torch.equal(p, trained[n])
        assert torch.equal(ema.state_dict()[n], averaged[n])


def test_swap_restores_after_an_exception_and_guards_updates():
    model = nn.Linear(2, 2)
    ema = EMA(model.named_parameters())
    set_values(model.parameters(), 1.0)
    with pytest.raises(KeyError), ema.apply_to(model):
        with pytest.raises(RuntimeError, match="inside swap_into"):
            ema.update(1)
        raise KeyError("boom")
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.parameters())


def test_swap_into_other_model_needs_matching_names():
    ema = EMA(nn.Linear(2, 2).named_parameters())
    with (
        pytest.raises(ValueError, match="no parameters named"),
        ema.swap_into(nn.Sequential(nn.Linear(2, 2))),
    ):
        pass


def test_unnamed_params_swap_into_their_model():
    model = nn.Linear(2, 2)
    ema = EMA(list(model.parameters()), decay=0.0)  # decay 0: the shadow follows the weights
    set_values(model.parameters(), 3.0)
    ema.update(1)
    set_values(model.parameters(), 5.0)
    with ema.swap_into(model):
        assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in model.parameters())
    assert all(torch.equal(p, torch.full_like(p, 5.0)) for p in model.parameters())


def test_state_dict_round_trip():
    params = make_params()
    ema = EMA(params, decay=0.7)
    set_values(params, 1.0)
    ema.update(1)
    saved = {k: v.clone() for k, v in ema.state_dict().items()}

    other = EMA(make_params(), decay=0.7)
    other.load_state_dict(saved)
    assert all(torch.equal(other.state_dict()[k], saved[k]) for k in saved)
    other.load_state_dict(list(saved.values()))
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"0": saved["0"]})
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict({"0": saved["0"], "1": torch.zeros(3)})


def test_bf16_weights_get_an_fp32_ema_that_keeps_small_updates():
    """Decay 0.999 moves the shadow by 0.001 x (weight - shadow) per step, far below bf16's resolution
    around 1 (2^-7): a bf16 shadow would stay put; the fp32 one must follow. Swapping it in and out must
    not round it through bf16."""
    model = nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    set_values(model.parameters(), 1.0)
    ema = EMA(model.named_parameters(), decay=0.999)
    assert ema.state_dict()["weight"].dtype == torch.float32
    set_values(model.parameters(), 2.0)
    for step in range(1, 101):
        ema.update(step)
    expected = 2.0 - 0.999**100  # shadow = 2 - (2 - 1) * decay^steps
    torch.testing.assert_close(ema.state_dict()["weight"], torch.full((4, 4), expected), rtol=1e-5, atol=1e-6)
    before = ema.state_dict()["weight"].clone()
    with ema.swap_into(model):
        assert model.weight.dtype == torch.bfloat16
        torch.testing.assert_close(model.weight.float(), before, rtol=2**-8, atol=0)
    assert torch.equal(ema.state_dict()["weight"], before)
    assert torch.equal(model.weight, torch.full((4, 4), 2.0, dtype=torch.bfloat16))


def test_bad_construction():
    with pytest.raises(ValueError, match="decay"):
        EMA(make_params(), decay=1.5)
    frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    with pytest.raises(ValueError, match="no trainable"):
        EMA([frozen])


# --- FSDP2 ---------------------------------------------------------------------------------------
DECAY, START, STEPS = 0.8, 1, 4


def build_model() -> nn.Sequential:
    torch.manual_seed(0)
    # 5 output rows: sharded unevenly over two ranks.
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def batch(step: int) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(step))


def fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = build_model()
        mesh = init_device_mesh("cpu", (world,))
        for layer in (model[0], model[2], model):
            fully_shard(layer, mesh=mesh)
        ema = EMA(model.named_parameters(), decay=DECAY, start_step=START)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        history = []
        for step in range(1, STEPS + 1):
            model(batch(step)).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            ema.update(step)
            history.append({n: p.full_tensor() for n, p in model.named_parameters()})
        state = ema.state_dict()
        for name, p in model.named_parameters():
            assert isinstance(state[name], DTensor) and state[name].placements == p.placements
            assert state[name].to_local().shape == p.to_local().shape
        shadow = {n: s.full_tensor() for n, s in state.items()}
        with ema.swap_into(model):
            inside = {n: p.full_tensor() for n, p in model.named_parameters()}
            output = model(batch(99)).detach()
        after = {n: p.full_tensor() for n, p in model.named_parameters()}
        # Loading full tensors into sharded shadows slices them locally.
        reloaded = EMA(model.named_parameters())
        reloaded.load_state_dict(shadow)
        reloaded_full = {n: s.full_tensor() for n, s in reloaded.state_dict().items()}
        if rank == 0:
            torch.save(
                {
                    "history": history,
                    "shadow": shadow,
                    "inside": inside,
                    "output": output,
                    "after": after,
                    "reloaded": reloaded_full,
                },
                out,
            )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp2_sharded_ema_equals_single_process(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "result.pt"
    mp.spawn(fsdp_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    result = torch.load(out)

    expected = {n: t.clone() for n, t in build_model().named_parameters()}
    for step, params in enumerate(result["history"], start=1):
        for n, p in params.items():
            expected[n] = p.clone() if step <= START else DECAY * expected[n] + (1 - DECAY) * p
    for n, want in expected.items():
        torch.testing.assert_close(result["shadow"][n], want)
        torch.testing.assert_close(result["reloaded"][n], want)
        assert torch.equal(result["inside"][n], result["shadow"][n])
        assert torch.equal(result["after"][n], result["history"][-1][n])
    reference = build_model()
    reference.load_state_dict(result["shadow"])
    torch.testing.assert_close(result["output"], reference(batch(99)).detach())
