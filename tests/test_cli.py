"""Command lines: one-line errors, flags a command refuses instead of ignoring, the launcher's preflight,
the output-folder lock, and the attention backend (flash-attn or SDPA) behind --attention_backend."""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from diffusers import MochiTransformer3DModel

from fastvideo.cli import UsageError, parse_config
from fastvideo.distill.config import DistillConfig
from fastvideo.lock import FolderInUse, FolderLock, check_free
from fastvideo.models.attention import resolve_backend
from fastvideo.models.mochi import MochiAdapter
from fastvideo.models.tiny import TINY_MOCHI_DIT
from fastvideo.training.config import TrainConfig


# --- flags ------------------------------------------------------------------------------------------
def test_bad_flags_and_values_are_one_line():
    with pytest.raises(UsageError, match=r"^argument --sp_size: invalid int value: 'x' \(see --help\)$"):
        parse_config(TrainConfig, ["--sp_size", "x"])
    with pytest.raises(UsageError, match="unrecognized arguments: --nope"):
        parse_config(TrainConfig, ["--nope"])


@pytest.mark.parametrize(
    "args",
    [["--lora_comfyui"], ["--lora_comfyui", "--model_type", "wan"]],
    ids=["mochi-no-lora", "wan-no-lora"],
)
def test_comfyui_export_is_refused_where_it_cannot_be_written(args):
    """ComfyUI key names need a LoRA run (of a family with a mapping: Mochi and Wan)."""
    with pytest.raises(
        ValueError, match="--lora_comfyui .* needs --use_lora and a family with a key mapping"
    ):
        parse_config(TrainConfig, args)
    parse_config(TrainConfig, ["--lora_comfyui", "--use_lora", "--model_type", "wan"])
    parse_config(TrainConfig, ["--lora_comfyui", "--use_lora", "--model_type", "mochi"])


@pytest.mark.parametrize(
    "flag",
    ["--validation_sampling_steps", "--validation_guidance_scale", "--weighting_scheme", "--logit_std"],
)
def test_distillation_refuses_fine_tuning_flags_it_would_ignore(flag):
    with pytest.raises(UsageError, match=f"{flag} is not used here: distillation"):
        parse_config(DistillConfig, [flag, "4"])
    parse_config(
        TrainConfig, [flag, "logit_normal" if flag == "--weighting_scheme" else "4"]
    )  # fine-tuning uses it


def test_launcher_preflight_refuses_before_any_worker(tiny_mochi, processed, tmp_path, capsys):
    from fastvideo.launch import main

    args = [
        "--model_path",
        str(tiny_mochi),
        "--data_json_path",
        str(processed),
        "--output_dir",
        str(tmp_path),
    ]
    code = main(["--standalone", "--nproc_per_node", "4", "-m", "fastvideo.train", "--sp_size", "3", *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: world size 4 is not divisible by dp_replicate x sp = 1 x 3; choose degrees whose "
                   "product divides the number of processes"]  # fmt: skip
    assert (
        main(["--nproc_per_node", "2", "-m", "fastvideo.distill", "--weighting_scheme", "mode", *args]) == 2
    )
    assert "--weighting_scheme is not used here" in capsys.readouterr().err


# --- one live run per output folder -----------------------------------------------------------------
def test_a_held_output_folder_is_refused_naming_the_holder(tiny_mochi, processed, tmp_path):
    cfg = TrainConfig(
        model_path=str(tiny_mochi), data_json_path=str(processed), output_dir=str(tmp_path / "out")
    )
    with FolderLock(cfg.output_dir):
        with pytest.raises(
            FolderInUse, match=r"in use by a live run: pid \d+ on host .*choose another OUTPUT_DIR"
        ):
            cfg.preflight(world_size=1)
    cfg.preflight(world_size=1)  # released: free again
    check_free(tmp_path / "never-made")


# --- attention backends -----------------------------------------------------------------------------
def test_backend_choice(monkeypatch):
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("sdpa", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="needs CUDA GPUs"):
        resolve_backend("flash", "cpu")
    monkeypatch.setattr("fastvideo.models.attention.flash_attn_installed", lambda: False)
    assert resolve_backend("auto", "cuda") == "sdpa"
    with pytest.raises(ValueError, match=r"needs flash-attn: pip install 'fastvideo\[flash\]'"):
        resolve_backend("flash", "cuda")
    monkeypatch.setattr("fastvideo.models.attention.flash_attn_installed", lambda: True)
    assert resolve_backend("auto", "cuda") == "flash"
    with pytest.raises(ValueError, match="--attention_backend must be one of auto, sdpa, flash"):
        TrainConfig(attention_backend="xformers")


def _model_and_inputs():
    torch.manual_seed(0)
    model = MochiTransformer3DModel(**TINY_MOCHI_DIT)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, [0, 2, 3]] = True
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(2, 12, 3, 6, 6, generator=g), timestep=torch.tensor([250.0, 700.0]),
                  encoder_hidden_states=torch.randn(2, 8, TINY_MOCHI_DIT["text_embed_dim"], generator=g),
                  encoder_attention_mask=mask, return_dict=False)  # fmt: skip
    return model, inputs


def _fake_flash_attn(calls: list) -> types.ModuleType:
    """flash_attn's call convention ([B, N, H, D], half precision) computed by SDPA, to check our side of it."""

    def flash_attn_func(q, k, v, dropout_p=0.0, causal=False):
        assert q.dtype in (torch.float16, torch.bfloat16) and q.shape[1] > q.shape[2] and not causal
        calls.append(tuple(q.shape))
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)

    return types.SimpleNamespace(flash_attn_func=flash_attn_func)


@pytest.mark.parametrize("backend", ["sdpa", "flash"])
def test_our_mochi_attention_equals_diffusers(backend, monkeypatch):
    """Without SP, sdpa leaves diffusers' own processor in place; flash installs fastvideo's, which must
    compute Mochi's joint attention (per-sample valid text tokens) exactly as diffusers does. flash-attn
    has no CPU kernels, so here its entry point is stood in by SDPA in its calling convention; on a GPU,
    benchmarks/gpu/check_attention.py compares the real kernel."""
    calls: list = []
    monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash_attn(calls))
    model, inputs = _model_and_inputs()
    ours = copy.deepcopy(model)
    MochiAdapter.__new__(MochiAdapter).set_attention(ours, None, backend)
    processor = type(ours.transformer_blocks[0].attn1.processor).__name__
    assert processor == ("MochiAttnProcessor2_0" if backend == "sdpa" else "MochiUlyssesAttnProcessor")
    expected, got = model(**inputs)[0], ours(**inputs)[0]
    if backend == "sdpa":
        assert torch.equal(got, expected)
    else:
        assert calls and calls[0][0] == 1  # one sample at a time, tokens before heads
        # Q, K, V and the output are rounded to bf16 in each of the blocks, as with flash-attn: a few bf16 eps.
        tol = 4 * torch.finfo(torch.bfloat16).eps
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_the_launcher_names_the_rank_that_failed_not_the_ones_that_lost_it():
    """The agent may record a failing rank and the peer that lost contact with it in the same instant."""
    from fastvideo.cli import PEER_LOST
    from fastvideo.launch import root_cause

    def failure(code, t):
        return types.SimpleNamespace(exitcode=code, timestamp=t)

    assert root_cause({0: failure(PEER_LOST, 5), 1: failure(2, 5)})[0] == 1
    assert root_cause({0: failure(-15, 4), 1: failure(PEER_LOST, 4), 2: failure(1, 6)})[0] == 2
    assert root_cause({0: failure(PEER_LOST, 7), 1: failure(-9, 3)})[0] == 1  # no cause known: the earliest
