"""The attention kernel behind fastvideo's attention processors: PyTorch SDPA or flash-attn.

    backend = resolve_backend("auto", device)     # "flash" on CUDA when flash-attn imports, else "sdpa"
    out = attend(query, key, value, backend)      # [B, H, N, D] in, [B, H, N, D] out

``--attention_backend`` (fine-tuning, distillation, sampling) picks it. ``flash`` runs
``flash_attn_func`` in bf16 (or fp16 when the inputs are fp16) and returns the inputs' dtype; it
needs CUDA and the ``flash`` extra (``pip install 'fastvideo[flash]'``). Asking for it where it
cannot run is refused with a message rather than silently falling back.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flash")


KERNELS = ("sdpa", "flash")
"""The kernels a processor runs on ("auto" resolved by :func:`resolve_backend` first)."""


def check_kernel(backend: str) -> None:
    """ValueError unless ``backend`` is one of :data:`KERNELS`."""
    if backend not in KERNELS:
        raise ValueError(
            f"attention backend {backend!r} is not one of {', '.join(KERNELS)}; resolve 'auto' first"
        )


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend (sdpa or flash) for ``name`` on ``device``; ValueError when it cannot run."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "flash" if device.type == "cuda" and flash_attn_installed() else "sdpa"
    if name == "flash":
        if device.type != "cuda":
            raise ValueError(
                "--attention_backend flash needs CUDA GPUs (flash-attn has no CPU kernels); use sdpa"
            )
        if not flash_attn_installed():
            raise ValueError(
                "--attention_backend flash needs flash-attn: pip install 'fastvideo[flash]' (it builds against "
                "your CUDA torch), or use sdpa"
            )
    return name


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, backend: str) -> torch.Tensor:
    """Full (non-causal) attention of ``query`` over ``key``/``value``, all [B, H, N, D]."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    if backend != "flash":
        raise ValueError(f"attention backend {backend!r} is not sdpa or flash (resolve it first)")
    from flash_attn import flash_attn_func

    dtype = query.dtype if query.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    q, k, v = (t.transpose(1, 2).to(dtype) for t in (query, key, value))  # flash-attn wants [B, N, H, D]
    return flash_attn_func(q, k, v, dropout_p=0.0, causal=False).transpose(1, 2).to(value.dtype)
