"""Ulysses sequence parallelism: collectives' autograd and SP == single process for every model family
(Mochi, Wan, CogVideoX), on 2 gloo CPU ranks.

One spawn of 2 processes runs every distributed check (`_run_all_checks`) and rank 0 writes the
numbers to JSON; the test functions below assert on them, so each failure names what broke while the
processes (and their torch/diffusers imports) start only once. Every rank also builds the plain
single-process model from the same seed and computes the reference output, loss and gradients itself.

The model-level checks run once per entry of ``FAMILIES`` (a tiny builder, dummy inputs and the SP
entry point per family); a new family needs one entry there, not new tests.
"""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from fastvideo.models.tiny import COGVIDEOX_VARIANT_DIT, TINY_COGVIDEOX_DIT, TINY_MOCHI_DIT, TINY_WAN_DIT

WORLD = 2
TOL = 1e-5
EPS32 = torch.finfo(torch.float32).eps
# (T, H, W) latent shapes -> tokens T * H/2 * W/2 (both families patch 2x2 in space, 1 in time):
# 32 (even), 27 (odd: needs padding), 12 (odd T).
SHAPES = {"even": (2, 8, 8), "odd_tokens": (3, 6, 6), "odd_frames": (3, 4, 4)}
CHECKPOINT_VARIANTS = ("wrap_after_enable", "wrap_before_enable", "diffusers_gradient_checkpointing")

# A tiny Wan DiT for these checks: 2 blocks of 4 heads x 16 (RoPE splits 16 channels into t/h/w =
# 8/4/4), smaller than the embedded tiny model so the 2-process job stays quick.
TEST_WAN_DIT = {
    **TINY_WAN_DIT, "num_attention_heads": 4, "in_channels": 4, "out_channels": 4, "freq_dim": 32, "ffn_dim": 64,
    "num_layers": 2, "rope_max_seq_len": 32,
}  # fmt: skip
# Image-to-video: CLIP image tokens (257 in Wan 2.1 I2V) go through their own K/V projections, and
# the text must be 512 tokens, the length diffusers hardcodes to find where the image tokens end.
WAN_I2V = dict(image_dim=24, added_kv_proj_dim=64)
WAN_IMAGE_TOKENS = 257
WAN_I2V_TEXT_TOKENS = 512
# A tiny CogVideoX DiT (2 of the embedded model's blocks): rotary positions as 5B; the "2b" variant has
# CogVideoX-2b's sinusoidal positions instead. Its joint attention sees 8 text tokens + the video.
TEST_COGVIDEOX_DIT = {**TINY_COGVIDEOX_DIT, "in_channels": 4, "out_channels": 4, "num_layers": 2}


# --- helpers used inside the worker processes -------------------------------------------------------


def _rel(got: torch.Tensor, ref: torch.Tensor, floor: float = 1e-30) -> float:
    """Relative error in the 2-norm, against at least ``floor``; exact zeros on both sides count as 0."""
    diff = (got.double() - ref.double()).norm().item()
    scale = ref.double().norm().item()
    return 0.0 if diff == 0 else diff / max(scale, floor)


def _seeded(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _perturbed(model):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Default init leaves e.g. Mochi's pos_frequencies at 0 (RoPE = identity): perturb everything
        # so RoPE positions, norms and gates all matter.
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _build_mochi(**overrides):
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(0)
    return _perturbed(MochiTransformer3DModel(**{**TINY_MOCHI_DIT, **overrides}).float())


def _build_wan(**overrides):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return _perturbed(WanTransformer3DModel(**{**TEST_WAN_DIT, **overrides}))


def _mochi_inputs(shape: tuple[int, int, int], config) -> dict:
    t, h, w = shape
    gen = torch.Generator().manual_seed(2)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, [0, 2, 3]] = True  # a different count, and not a prefix
    return dict(
        hidden_states=torch.randn(2, config["in_channels"], t, h, w, generator=gen),
        encoder_hidden_states=torch.randn(2, 8, config["text_embed_dim"], generator=gen),
        timestep=torch.tensor([250.0, 700.0]),
        encoder_attention_mask=mask,
    )


def _wan_inputs(shape: tuple[int, int, int], config) -> dict:
    t, h, w = shape
    gen = torch.Generator().manual_seed(2)
    i2v = config["image_dim"] is not None
    inputs = dict(
        hidden_states=torch.randn(2, config["in_channels"], t, h, w, generator=gen),
        encoder_hidden_states=torch.randn(
            2, WAN_I2V_TEXT_TOKENS if i2v else 8, config["text_dim"], generator=gen
        ),
        timestep=torch.tensor([250.0, 700.0]),
    )
    if i2v:
        inputs["encoder_hidden_states_image"] = torch.randn(
            2, WAN_IMAGE_TOKENS, config["image_dim"], generator=gen
        )
    return inputs


def _build_cogvideox(**overrides):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    return _perturbed(CogVideoXTransformer3DModel(**{**TEST_COGVIDEOX_DIT, **overrides}))


def _cogvideox_inputs(shape: tuple[int, int, int], config) -> dict:
    """Frames-first latents, as CogVideoX takes them, and the rotary tables the pipeline would pass."""
    from fastvideo.models.cogvideox import rotary_tables

    t, h, w = shape
    gen = torch.Generator().manual_seed(2)
    # 2B's sinusoidal table covers exactly max_text_seq_length text tokens before the video.
    text = 8 if config["use_rotary_positional_embeddings"] else config["max_text_seq_length"]
    return dict(
        hidden_states=torch.randn(2, t, config["in_channels"], h, w, generator=gen),
        encoder_hidden_states=torch.randn(2, text, config["text_embed_dim"], generator=gen),
        timestep=torch.tensor([250.0, 700.0]),
        image_rotary_emb=rotary_tables(config, t, h, w, "cpu"),
    )


def _enable_cogvideox(model, group, backend: str = "sdpa") -> None:
    from fastvideo.models.cogvideox_sp import enable_cogvideox_sequence_parallel

    enable_cogvideox_sequence_parallel(model, group, backend)


def _enable_mochi(model, group, backend: str = "sdpa") -> None:
    from fastvideo.models.mochi_sp import enable_mochi_sequence_parallel

    enable_mochi_sequence_parallel(model, group, backend)


def _enable_wan(model, group, backend: str = "sdpa") -> None:
    from fastvideo.models.wan_sp import enable_wan_sequence_parallel

    enable_wan_sequence_parallel(model, group, backend)


@dataclass(frozen=True)
class Family:
    """What the model-level checks need to know about one model family."""

    build: Callable[..., torch.nn.Module]  # (**config overrides) -> seeded, perturbed tiny model
    inputs: Callable[[tuple[int, int, int], dict], dict]  # (latent T, H, W; model config) -> kwargs
    enable: Callable[..., None]  # (model, sp group) -> SP enabled
    config: dict
    blocks: str  # the ModuleList of transformer blocks (checkpoint-wrapped one by one)
    block_class: str
    # Class names of a block's attention processors in a fresh model, and after SP (sdpa) is enabled.
    diffusers_processors: tuple[str, ...]
    sp_processors: tuple[str, ...]
    # Extra SP == single process cases: name -> config overrides (compared on the odd token count, or on
    # variant_shapes[name]).
    variants: dict[str, dict] = field(default_factory=dict)
    variant_shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)


FAMILIES = {
    "mochi": Family(
        build=_build_mochi,
        inputs=_mochi_inputs,
        enable=_enable_mochi,
        config=TINY_MOCHI_DIT,
        blocks="transformer_blocks",
        block_class="MochiTransformerBlock",
        diffusers_processors=("MochiAttnProcessor2_0",),
        sp_processors=("MochiUlyssesAttnProcessor",),
    ),
    "wan": Family(
        build=_build_wan,
        inputs=_wan_inputs,
        enable=_enable_wan,
        config=TEST_WAN_DIT,
        blocks="blocks",
        block_class="WanTransformerBlock",
        diffusers_processors=("WanAttnProcessor", "WanAttnProcessor"),
        # Cross-attention keeps diffusers' processor: it is exact per local token without collectives.
        sp_processors=("WanUlyssesAttnProcessor", "WanAttnProcessor"),
        variants={"i2v": WAN_I2V},
    ),
    "cogvideox": Family(
        build=_build_cogvideox,
        inputs=_cogvideox_inputs,
        enable=_enable_cogvideox,
        config=TEST_COGVIDEOX_DIT,
        blocks="transformer_blocks",
        block_class="CogVideoXBlock",
        diffusers_processors=("CogVideoXAttnProcessor2_0",),
        sp_processors=("CogVideoXUlyssesAttnProcessor",),
        variants={
            "2b": {"use_rotary_positional_embeddings": False},
            "1.5": COGVIDEOX_VARIANT_DIT["1.5"],
        },
        # 1.5 patches latent frames in pairs: 2 frames of 6x6 are 9 tokens (odd: padded).
        variant_shapes={"1.5": (2, 6, 6)},
    ),
}
FAMILY_VARIANTS = [(name, variant) for name, fam in FAMILIES.items() for variant in fam.variants]


def _forward(model, inputs) -> torch.Tensor:
    # Both families' diffusers forward takes keyword inputs and returns (sample,) with return_dict=False.
    return model(**inputs, return_dict=False)[0]


def _forward_backward(model, inputs, target, loss_fn):
    model.zero_grad(set_to_none=True)
    out = _forward(model, inputs)
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


def _compare(family, reference, sp_model, shape, group, loss_fn=None, reduce_grads=True) -> dict:
    """Reference vs SP: output, loss and per-parameter gradients (after the SP mean)."""
    import torch.distributed as dist
    import torch.nn.functional as F

    loss_fn = loss_fn or F.mse_loss
    inputs = family.inputs(shape, reference.config)
    target = _seeded(3, *inputs["hidden_states"].shape)
    ref_out, ref_loss, ref_grads = _forward_backward(reference, inputs, target, F.mse_loss)
    out, loss, grads = _forward_backward(sp_model, inputs, target, loss_fn)

    outs = [torch.empty_like(out) for _ in range(WORLD)]
    dist.all_gather(outs, out.contiguous(), group=group)
    losses = [torch.empty_like(loss) for _ in range(WORLD)]
    dist.all_gather(losses, loss, group=group)
    out_rel = _rel(out, ref_out)
    grad_errors, missing = {}, []
    # A gradient that is zero in exact arithmetic (a key bias under softmax's shift invariance, when no
    # RoPE rotates the keys: CogVideoX-2b's norm_k.bias) is rounding noise, a few 1e-9 of the largest
    # gradient; gradients are compared against at least 1e-3 of the largest one's norm, not their own.
    floor = 1e-3 * max(g.double().norm().item() for g in ref_grads.values() if g is not None)
    for name, ref_grad in ref_grads.items():
        got = _sp_mean(grads[name], group) if reduce_grads else grads[name]
        if hasattr(got, "full_tensor"):
            got = got.full_tensor()
        if (got is None) != (ref_grad is None):
            missing.append(name)
        elif got is not None:
            grad_errors[name] = _rel(got, ref_grad, floor)
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


def _sp_copy(family, reference, group, wrap=None):
    model = copy.deepcopy(reference)
    if wrap == "before":
        _wrap_blocks(family, model)
    family.enable(model, group)
    if wrap == "after":
        _wrap_blocks(family, model)
    return model


def _wrap_blocks(family, model) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    blocks = getattr(model, family.blocks)
    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block)


def _count_block_calls(family, model) -> list[int]:
    """Counts forward calls of the innermost blocks (recomputation calls them a second time)."""
    calls = [0]
    for module in model.modules():
        if type(module).__name__ == family.block_class:
            module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _processor_names(family, model) -> list[str]:
    """Class names of the first block's attention processors (Mochi: attn1; Wan: attn1, attn2)."""
    first = getattr(model, family.blocks)[0]
    return [type(m.processor).__name__ for m in first.modules() if hasattr(m, "processor")]


def _model_checks(family, group, solo_group, mesh) -> dict:
    from fastvideo.parallel.sequence_parallel import sp_local_mse_loss

    res = {}
    reference = family.build()
    for case, shape in SHAPES.items():
        res[f"case_{case}"] = _compare(family, reference, _sp_copy(family, reference, group), shape, group)

    # EMA / teacher copies are made with deepcopy after SP is enabled.
    res["deepcopy_of_sp_model"] = _compare(
        family, reference, copy.deepcopy(_sp_copy(family, reference, group)), SHAPES["odd_tokens"], group
    )
    res["local_loss"] = _compare(
        family,
        reference,
        _sp_copy(family, reference, group),
        SHAPES["odd_tokens"],
        group,
        loss_fn=lambda out, tgt: sp_local_mse_loss(out, tgt, group),
    )
    # local loss values differ per rank; _compare checks their mean against the full MSE.
    for variant in CHECKPOINT_VARIANTS:
        if variant == "diffusers_gradient_checkpointing":
            model = _sp_copy(family, reference, group)
            model.enable_gradient_checkpointing()
        else:
            wrap = "after" if variant == "wrap_after_enable" else "before"
            model = _sp_copy(family, reference, group, wrap=wrap)
        calls = _count_block_calls(family, model)
        res[f"ckpt_{variant}"] = _compare(family, reference, model, SHAPES["odd_tokens"], group)
        # Every block runs once in forward and once more when backward recomputes it.
        res[f"ckpt_{variant}"]["block_calls"] = calls[0]

    res["fsdp2"] = _fsdp2_check(family, reference, mesh)

    for variant, overrides in family.variants.items():
        variant_ref = family.build(**overrides)
        shape = family.variant_shapes.get(variant, SHAPES["odd_tokens"])
        res[f"variant_{variant}"] = _compare(
            family, variant_ref, _sp_copy(family, variant_ref, group), shape, group
        )

    try:
        family.enable(family.build(num_attention_heads=3), group)
        res["heads_error"] = None
    except ValueError as err:
        res["heads_error"] = str(err)

    res["fresh_model_processors"] = _processor_names(family, family.build())
    sp_model = _sp_copy(family, reference, group)
    res["sp_model_processors"] = _processor_names(family, sp_model)
    try:
        family.enable(sp_model, group)
        res["double_enable_error"] = None
    except RuntimeError as err:
        res["double_enable_error"] = str(err)

    # An SP group of one rank only picks the kernel: no hooks, diffusers' processors for sdpa.
    solo = copy.deepcopy(reference)
    family.enable(solo, solo_group)
    res["solo_processors"] = _processor_names(family, solo)
    res["solo_hooks"] = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in solo.modules())
    return res


def _wan_only_checks(group) -> dict:
    """Wan 2.2 TI2V's per-token timesteps ([B, N]) are refused under SP instead of failing on shapes."""
    family = FAMILIES["wan"]
    model = _sp_copy(family, family.build(), group)
    t, h, w = SHAPES["even"]
    inputs = family.inputs((t, h, w), model.config)
    inputs["timestep"] = torch.full((2, t * (h // 2) * (w // 2)), 500.0)  # one per token
    try:
        _forward(model, inputs)
        return {"per_token_timestep_error": None}
    except NotImplementedError as err:
        return {"per_token_timestep_error": str(err)}


def _fsdp2_check(family, reference, mesh) -> dict:
    """fully_shard per block + root over the SP ranks: FSDP's default gradient mean is the SP mean."""
    from torch.distributed.fsdp import fully_shard

    model = copy.deepcopy(reference)
    family.enable(model, mesh)
    _wrap_blocks(family, model)
    for block in getattr(model, family.blocks):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return _compare(family, reference, model, SHAPES["odd_tokens"], mesh.get_group(), reduce_grads=False)


def _run_all_checks(rank: int) -> dict:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("sp",))
    group = dist.new_group(list(range(WORLD)))
    # Every rank must create every group; each keeps its own single-rank one.
    solo_group = [dist.new_group([r]) for r in range(WORLD)][rank]
    start = time.perf_counter()
    res = {"collectives": _collective_checks(group, rank)}
    for name, family in FAMILIES.items():
        family_start = time.perf_counter()
        res[name] = _model_checks(family, group, solo_group, mesh)
        res[name]["seconds"] = time.perf_counter() - family_start
    res["wan"].update(_wan_only_checks(group))
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
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sp_equals_single_process(sp, family, case):
    """Output, loss and SP-mean gradients equal the single-process ones (32, 27 and 12 tokens)."""
    _assert_matches_single_process(sp[family][f"case_{case}"])


@pytest.mark.slow
@pytest.mark.parametrize(("family", "variant"), FAMILY_VARIANTS)
def test_model_variant_sp_equals_single_process(sp, family, variant):
    """Other configs of a family (Wan image-to-video: 257 image + 512 text tokens in cross-attention)."""
    _assert_matches_single_process(sp[family][f"variant_{variant}"])


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_deepcopy_of_sp_model_still_matches(sp, family):
    _assert_matches_single_process(sp[family]["deepcopy_of_sp_model"])


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_local_loss_helper_gives_exact_gradients(sp, family):
    _assert_matches_single_process(sp[family]["local_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", CHECKPOINT_VARIANTS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_activation_checkpointing(sp, family, variant):
    res = sp[family][f"ckpt_{variant}"]
    _assert_matches_single_process(res)
    assert res["block_calls"] == 2 * FAMILIES[family].config["num_layers"], "blocks were not recomputed"


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fsdp2_default_gradient_mean_is_exact(sp, family):
    _assert_matches_single_process(sp[family]["fsdp2"])


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_heads_not_divisible_is_refused(sp, family):
    msg = sp[family]["heads_error"]
    assert msg is not None and "3 attention heads" in msg and "[1, 3]" in msg


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_enabling_changes_only_that_instance(sp, family):
    assert sp[family]["fresh_model_processors"] == list(FAMILIES[family].diffusers_processors)
    assert sp[family]["sp_model_processors"] == list(FAMILIES[family].sp_processors)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_enabling_twice_is_refused(sp, family):
    assert "already enabled" in (sp[family]["double_enable_error"] or "")


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sp_size_one_only_sets_the_kernel(sp, family):
    assert sp[family]["solo_processors"] == list(FAMILIES[family].diffusers_processors)
    assert sp[family]["solo_hooks"] == 0


@pytest.mark.slow
def test_wan_per_token_timesteps_are_refused(sp):
    assert "per-token timesteps" in (sp["wan"]["per_token_timestep_error"] or "")


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
    from fastvideo.parallel.sequence_parallel import valid_sp_sizes

    assert valid_sp_sizes(24) == [1, 2, 3, 4, 6, 8, 12, 24]


def _install_groupless_wan_processors(model, backend: str) -> None:
    from fastvideo.models.wan_sp import WanCrossAttnProcessor, WanUlyssesAttnProcessor

    self_attn, cross_attn = WanUlyssesAttnProcessor(None, backend), WanCrossAttnProcessor(backend)
    for block in model.blocks:
        block.attn1.processor, block.attn2.processor = self_attn, cross_attn


@pytest.mark.parametrize("config", ["t2v", "i2v", "fused_projections"])
def test_wan_processors_without_sp_equal_diffusers(config):
    """fastvideo's Wan processors (what --attention_backend flash installs) on the sdpa kernel == diffusers."""
    overrides = WAN_I2V if config == "i2v" else {}
    reference = _build_wan(**overrides)
    model = copy.deepcopy(reference)
    _install_groupless_wan_processors(model, "sdpa")
    if config == "fused_projections":
        reference.fuse_qkv_projections()
        model.fuse_qkv_projections()
    inputs = _wan_inputs(SHAPES["odd_tokens"], reference.config)
    target = _seeded(3, *inputs["hidden_states"].shape)
    ref_out, _, ref_grads = _forward_backward(reference, inputs, target, torch.nn.functional.mse_loss)
    out, _, grads = _forward_backward(model, inputs, target, torch.nn.functional.mse_loss)
    assert _rel(out, ref_out) < TOL
    assert all(_rel(grads[n], g) < TOL for n, g in ref_grads.items() if g is not None)
    assert [n for n, g in ref_grads.items() if (g is None) != (grads[n] is None)] == []


def test_configure_wan_attention_picks_processors_per_kernel():
    from fastvideo.models.wan_sp import configure_wan_attention

    model = _build_wan()
    diffusers_processors = [m.processor for m in model.modules() if hasattr(m, "processor")]
    configure_wan_attention(model, "sdpa")
    assert [m.processor for m in model.modules() if hasattr(m, "processor")] == diffusers_processors

    configure_wan_attention(model, "flash")  # installing needs no GPU; running it would
    block = model.blocks[1]
    assert type(block.attn1.processor).__name__ == "WanUlyssesAttnProcessor"
    assert type(block.attn2.processor).__name__ == "WanCrossAttnProcessor"
    assert block.attn1.processor.backend == block.attn2.processor.backend == "flash"
    assert block.attn1.processor.group is None
    # EMA / teacher copies share the (stateless) processors.
    copied = copy.deepcopy(model)
    assert copied.blocks[1].attn2.processor is block.attn2.processor
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        configure_wan_attention(model, "auto")
