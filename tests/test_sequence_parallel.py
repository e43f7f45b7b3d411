"""Ulysses sequence parallelism: collectives' autograd and Mochi SP == single process, on 2 gloo CPU ranks.

One spawn of 2 processes runs every distributed check (`_run_all_checks`) and rank 0 writes the
numbers to JSON; the test functions below assert on them, so each failure names what broke while the
processes (and their torch/diffusers imports) start only once. Every rank also builds the plain
single-process model from the same seed and computes the reference output, loss and gradients itself.
"""

from __future__ import annotations

import copy
import json
import socket
import time
from pathlib import Path

import pytest
import torch

from fastvideo.models.tiny import TINY_MOCHI_DIT

WORLD = 2
TOL = 1e-5
EPS32 = torch.finfo(torch.float32).eps
# (T, H, W) latent shapes -> tokens T * H/2 * W/2: 32 (even), 27 (odd: needs padding), 12 (odd T).
SHAPES = {"even": (2, 8, 8), "odd_tokens": (3, 6, 6), "odd_frames": (3, 4, 4)}
CHECKPOINT_VARIANTS = ("wrap_after_enable", "wrap_before_enable", "diffusers_gradient_checkpointing")


# --- helpers used inside the worker processes -------------------------------------------------------


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error in the 2-norm; exact zeros on both sides count as 0."""
    diff = (got.double() - ref.double()).norm().item()
    scale = ref.double().norm().item()
    return 0.0 if diff == 0 else diff / max(scale, 1e-30)


def _seeded(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _build_mochi(**overrides):
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(0)
    model = MochiTransformer3DModel(**{**TINY_MOCHI_DIT, **overrides}).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Default init leaves pos_frequencies at 0 (RoPE = identity): perturb everything so RoPE
        # positions, norms and gates all matter.
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _inputs(shape: tuple[int, int, int]) -> dict:
    t, h, w = shape
    gen = torch.Generator().manual_seed(2)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, [0, 2, 3]] = True  # a different count, and not a prefix
    return dict(
        hidden_states=torch.randn(2, TINY_MOCHI_DIT["in_channels"], t, h, w, generator=gen),
        encoder_hidden_states=torch.randn(2, 8, TINY_MOCHI_DIT["text_embed_dim"], generator=gen),
        timestep=torch.tensor([250.0, 700.0]),
        encoder_attention_mask=mask,
    )


def _forward_backward(model, inputs, target, loss_fn):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, return_dict=False)[0]
    loss = loss_fn(out, target)
    loss.backward()
    # checkpoint_wrapper inserts a level into parameter names; compare by the plain model's names.
    grads = {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in model.named_parameters()}
    return out.detach(), loss.detach(), grads


def _sp_mean(grad: torch.Tensor | None, group) -> torch.Tensor | None:
    """The documented reduction: mean of the ranks' gradients over the SP group."""
    import torch.distributed as dist

    if grad is None:
        return None
    grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad.clone()
    dist.all_reduce(grad, group=group)
    return grad / WORLD


def _compare(reference, sp_model, shape, group, loss_fn=None, reduce_grads=True) -> dict:
    """Reference vs SP: output, loss and per-parameter gradients (after the SP mean)."""
    import torch.distributed as dist
    import torch.nn.functional as F

    loss_fn = loss_fn or F.mse_loss
    inputs = _inputs(shape)
    target = _seeded(3, *inputs["hidden_states"].shape)
    ref_out, ref_loss, ref_grads = _forward_backward(reference, inputs, target, F.mse_loss)
    out, loss, grads = _forward_backward(sp_model, inputs, target, loss_fn)

    outs = [torch.empty_like(out) for _ in range(WORLD)]
    dist.all_gather(outs, out.contiguous(), group=group)
    losses = [torch.empty_like(loss) for _ in range(WORLD)]
    dist.all_gather(losses, loss, group=group)
    out_rel = _rel(out, ref_out)
    grad_errors, missing = {}, []
    for name, ref_grad in ref_grads.items():
        got = _sp_mean(grads[name], group) if reduce_grads else grads[name]
        if hasattr(got, "full_tensor"):
            got = got.full_tensor()
        if (got is None) != (ref_grad is None):
            missing.append(name)
        elif got is not None:
            grad_errors[name] = _rel(got, ref_grad)
    worst = max(grad_errors, key=grad_errors.get)
    return {
        "out_shape_ok": list(out.shape) == list(ref_out.shape),
        "out_rel": out_rel,
        "ranks_identical": all(torch.equal(o, outs[0]) for o in outs),
        "loss_rel": abs(torch.stack(losses).mean().item() - ref_loss.item()) / ref_loss.item(),
        "loss_rtol": _loss_rtol(ref_out, target, out_rel),
        "num_grads": len(grad_errors),
        "grad_rel_max": grad_errors[worst],
        "grad_worst_param": worst,
        "grad_presence_mismatch": missing,
    }


def _loss_rtol(ref_out: torch.Tensor, target: torch.Tensor, out_rel: float) -> float:
    """How far an MSE may move, relatively, from the reference without anything being wrong.

    Two parts, both derived rather than tuned: the outputs' own difference, propagated through the MSE
    (|d MSE| <= 2 |out - target| |d out| / n, i.e. 2 out_rel |out| / |out - target| relative), and the
    rounding of a float32 sum of n non-negative terms taken in another order (another split over
    ranks): typically sqrt(n) eps, bounded here by 4 sqrt(n) eps per sum and two sums.
    """
    n = target.numel()
    propagated = 2 * out_rel * (ref_out.double().norm() / (ref_out.double() - target.double()).norm()).item()
    return propagated + 2 * 4 * n**0.5 * EPS32


def _collective_checks(group, rank: int) -> dict:
    from fastvideo.parallel.sequence_parallel import (
        SeqShard,
        all_gather_along,
        heads_to_seq,
        local_chunk,
        seq_to_heads,
    )

    res = {}
    # all_to_all: [B, S/P, H, D] -> [B, S, H/P, D]; rank r's inputs/weights come from seeds every rank knows.
    xs = [_seeded(100 + r, 2, 3, 4, 5) for r in range(WORLD)]
    ws = [_seeded(200 + r, 2, 6, 2, 5) for r in range(WORLD)]
    x = xs[rank].clone().requires_grad_()
    y = seq_to_heads(x, group)
    res["a2a_forward"] = _rel(y, torch.cat(xs, dim=1)[:, :, 2 * rank : 2 * rank + 2])
    (y * ws[rank]).sum().backward()
    res["a2a_grad"] = _rel(x.grad, torch.cat(ws, dim=2)[:, 3 * rank : 3 * rank + 3])
    x.grad = None
    z = heads_to_seq(seq_to_heads(x, group), group)
    res["a2a_roundtrip"] = _rel(z, x)
    (z * ws[rank][:, :3].repeat(1, 1, 2, 1)).sum().backward()
    res["a2a_roundtrip_grad"] = _rel(x.grad, ws[rank][:, :3].repeat(1, 1, 2, 1))

    # all_gather_along: forward concatenates, backward reduce-scatters (sums) every rank's gradient.
    xs = [_seeded(300 + r, 2, 3, 5) for r in range(WORLD)]
    ws = [_seeded(400 + r, 2, 6, 5) for r in range(WORLD)]
    x = xs[rank].clone().requires_grad_()
    y = all_gather_along(x, 1, group)
    res["gather_forward"] = _rel(y, torch.cat(xs, dim=1))
    (y * ws[rank]).sum().backward()
    res["gather_grad"] = _rel(x.grad, sum(ws)[:, 3 * rank : 3 * rank + 3])

    # local_chunk: this rank's slice; its gradient is zero elsewhere, and the SP sum is the full gradient.
    full = _seeded(500, 2, 6).requires_grad_()
    w = _seeded(600 + rank, 2, 3)
    (local_chunk(full, 1, group) * w).sum().backward()
    expected = torch.zeros(2, 6)
    expected[:, 3 * rank : 3 * rank + 3] = w
    res["local_chunk_grad"] = _rel(full.grad, expected)

    # SeqShard with padding: 5 tokens over 2 ranks -> chunks of 3, the last one padded.
    x = _seeded(700, 2, 5, 4).requires_grad_()
    shard = SeqShard.of(5, group)
    local = shard.split(x, 1)
    res["shard_local_shape"] = list(local.shape)
    back = shard.gather(local, 1, group)
    res["shard_roundtrip"] = _rel(back, x)
    w = _seeded(800, 2, 5, 4)
    (back * w).sum().backward()
    res["shard_grad_sp_mean"] = _rel(_sp_mean(x.grad, group), w)
    return res


def _sp_copy(reference, group, wrap=None):
    from fastvideo.models.mochi_sp import enable_mochi_sequence_parallel

    model = copy.deepcopy(reference)
    if wrap == "before":
        _wrap_blocks(model)
    enable_mochi_sequence_parallel(model, group)
    if wrap == "after":
        _wrap_blocks(model)
    return model


def _wrap_blocks(model) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.transformer_blocks):
        model.transformer_blocks[i] = checkpoint_wrapper(block)


def _count_block_calls(model) -> list[int]:
    """Counts forward calls of the innermost blocks (recomputation calls them a second time)."""
    calls = [0]
    for module in model.modules():
        if type(module).__name__ == "MochiTransformerBlock":
            module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _model_checks(group, mesh) -> dict:
    from diffusers.models.attention_processor import MochiAttnProcessor2_0

    from fastvideo.models.mochi_sp import enable_mochi_sequence_parallel
    from fastvideo.parallel.sequence_parallel import sp_local_mse_loss

    res = {}
    reference = _build_mochi()
    for case, shape in SHAPES.items():
        res[f"case_{case}"] = _compare(reference, _sp_copy(reference, group), shape, group)

    # EMA / teacher copies are made with deepcopy after SP is enabled.
    res["deepcopy_of_sp_model"] = _compare(
        reference, copy.deepcopy(_sp_copy(reference, group)), SHAPES["odd_tokens"], group
    )
    res["local_loss"] = _compare(
        reference,
        _sp_copy(reference, group),
        SHAPES["odd_tokens"],
        group,
        loss_fn=lambda out, tgt: sp_local_mse_loss(out, tgt, group),
    )
    # local loss values differ per rank; _compare checks their mean against the full MSE.
    for variant in CHECKPOINT_VARIANTS:
        if variant == "diffusers_gradient_checkpointing":
            model = _sp_copy(reference, group)
            model.enable_gradient_checkpointing()
        else:
            model = _sp_copy(reference, group, wrap="after" if variant == "wrap_after_enable" else "before")
        calls = _count_block_calls(model)
        res[f"ckpt_{variant}"] = _compare(reference, model, SHAPES["odd_tokens"], group)
        # 2 blocks run once in forward and once more when backward recomputes them.
        res[f"ckpt_{variant}"]["block_calls"] = calls[0]

    res["fsdp2"] = _fsdp2_check(reference, mesh)

    try:
        enable_mochi_sequence_parallel(_build_mochi(num_attention_heads=3), group)
        res["heads_error"] = None
    except ValueError as err:
        res["heads_error"] = str(err)

    fresh = _build_mochi()
    res["fresh_model_processor_is_diffusers"] = isinstance(
        fresh.transformer_blocks[0].attn1.processor, MochiAttnProcessor2_0
    )
    sp_model = _sp_copy(reference, group)
    res["sp_model_processor"] = type(sp_model.transformer_blocks[0].attn1.processor).__name__
    return res


def _fsdp2_check(reference, mesh) -> dict:
    """fully_shard per block + root over the SP ranks: FSDP's default gradient mean is the SP mean."""
    from torch.distributed.fsdp import fully_shard

    from fastvideo.models.mochi_sp import enable_mochi_sequence_parallel

    model = copy.deepcopy(reference)
    enable_mochi_sequence_parallel(model, mesh)
    _wrap_blocks(model)
    for block in model.transformer_blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return _compare(reference, model, SHAPES["odd_tokens"], mesh.get_group(), reduce_grads=False)


def _run_all_checks(rank: int) -> dict:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("sp",))
    group = dist.new_group(list(range(WORLD)))
    start = time.perf_counter()
    res = {"collectives": _collective_checks(group, rank)}
    res.update(_model_checks(group, mesh))
    res["worker_seconds"] = time.perf_counter() - start
    return res


def _worst_over_ranks(res, group_size: int):
    """Combine both ranks' results: the larger error wins (numbers), every rank must agree (flags)."""
    import torch.distributed as dist

    gathered = [None] * group_size
    dist.all_gather_object(gathered, res)

    def merge(values):
        first = values[0]
        if isinstance(first, dict):
            return {k: merge([v[k] for v in values]) for k in first}
        if isinstance(first, bool):
            return all(values)
        if isinstance(first, int | float):
            return max(values)
        return first

    return merge(gathered)


def _worker(rank: int, port: int, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        merged = _worst_over_ranks(_run_all_checks(rank), WORLD)
        if rank == 0:
            Path(out_file).write_text(json.dumps(merged, indent=1))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the tests --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp(tmp_path_factory) -> dict:
    out_file = tmp_path_factory.mktemp("sp") / "results.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # 2 ranks on a 2-core machine
        torch.multiprocessing.spawn(_worker, args=(_free_port(), str(out_file)), nprocs=WORLD, join=True)
    return json.loads(out_file.read_text())


def _assert_matches_single_process(res: dict) -> None:
    assert res["out_shape_ok"]
    assert res["ranks_identical"], "SP ranks returned different outputs"
    assert res["out_rel"] < TOL, res
    assert res["loss_rel"] <= res["loss_rtol"], res
    assert res["grad_presence_mismatch"] == []
    assert res["num_grads"] > 50
    assert res["grad_rel_max"] < TOL, res


@pytest.mark.slow
def test_all_to_all_forward_roundtrip_and_backward(sp):
    c = sp["collectives"]
    for key in ("a2a_forward", "a2a_grad", "a2a_roundtrip", "a2a_roundtrip_grad"):
        assert c[key] == 0.0, (key, c[key])


@pytest.mark.slow
def test_all_gather_backward_is_reduce_scatter_sum(sp):
    c = sp["collectives"]
    assert c["gather_forward"] == 0.0
    assert c["gather_grad"] < 1e-7


@pytest.mark.slow
def test_local_chunk_and_padded_shard(sp):
    c = sp["collectives"]
    assert c["local_chunk_grad"] == 0.0
    assert c["shard_local_shape"] == [2, 3, 4]
    assert c["shard_roundtrip"] == 0.0
    assert c["shard_grad_sp_mean"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SHAPES))
def test_mochi_sp_equals_single_process(sp, case):
    """Output, loss and SP-mean gradients equal the single-process ones (32, 27 and 12 tokens)."""
    _assert_matches_single_process(sp[f"case_{case}"])


@pytest.mark.slow
def test_deepcopy_of_sp_model_still_matches(sp):
    _assert_matches_single_process(sp["deepcopy_of_sp_model"])


@pytest.mark.slow
def test_local_loss_helper_gives_exact_gradients(sp):
    _assert_matches_single_process(sp["local_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", CHECKPOINT_VARIANTS)
def test_activation_checkpointing(sp, variant):
    res = sp[f"ckpt_{variant}"]
    _assert_matches_single_process(res)
    assert res["block_calls"] == 2 * TINY_MOCHI_DIT["num_layers"], "blocks were not recomputed"


@pytest.mark.slow
def test_fsdp2_default_gradient_mean_is_exact(sp):
    _assert_matches_single_process(sp["fsdp2"])


@pytest.mark.slow
def test_heads_not_divisible_is_refused(sp):
    msg = sp["heads_error"]
    assert msg is not None and "3 attention heads" in msg and "[1, 3]" in msg


@pytest.mark.slow
def test_enabling_changes_only_that_instance(sp):
    assert sp["fresh_model_processor_is_diffusers"]
    assert sp["sp_model_processor"] == "MochiUlyssesAttnProcessor"


def test_padding_helpers():
    from fastvideo.parallel.sequence_parallel import SeqShard, pad_to_multiple, trim

    x = torch.arange(10.0).view(2, 5)
    padded, length = pad_to_multiple(x, 1, 4)
    assert padded.shape == (2, 8) and length == 5 and padded[:, 5:].abs().sum() == 0
    assert torch.equal(trim(padded, 1, length), x)
    assert pad_to_multiple(x, 1, 5)[0] is x
    shard = SeqShard(full_len=27, world=2, rank=1)
    assert (shard.chunk_len, shard.padded_len, shard.start, shard.num_pad) == (14, 28, 14, 1)
    local = shard.split(torch.arange(27.0).view(1, 27), 1)
    assert local.shape == (1, 14) and local[0, -1] == 0 and local[0, 0] == 14


def test_valid_sp_sizes():
    from fastvideo.models.mochi_sp import valid_sp_sizes

    assert valid_sp_sizes(24) == [1, 2, 3, 4, 6, 8, 12, 24]
