"""flash-attn against SDPA inside Mochi's attention, side by side: equal within bf16, and how fast.

    python benchmarks/gpu/check_attention.py                      # a CUDA machine with flash-attn installed
    python benchmarks/gpu/check_attention.py --smoke              # CPU, toy size: checks the script

A ``--layers``-block Mochi DiT with mochi-1-preview's block config (24 heads x 128) and random bf16
weights runs one forward and backward on random latents (``--frames`` x 480 x 848) and T5-sized text
(256 tokens, ``--valid_tokens`` of them valid), twice from identical weights and inputs: once with
``--attention_backend sdpa`` (diffusers' own processor) and once with ``flash`` (fastvideo's
processor on flash-attn). It prints, as one JSON line, the relative error of the output and of the
parameter gradients of flash against sdpa, and the median forward+backward time of each. With
``--smoke`` the kernel is SDPA on both sides (fastvideo's processor against diffusers'), on a toy
model: the same code path bar the kernel.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import time

import torch
from diffusers import MochiTransformer3DModel

from fastvideo.models.mochi import MochiAdapter
from fastvideo.models.mochi_sp import MochiUlyssesAttnProcessor, _set_processor

FULL_BLOCK = {"num_attention_heads": 24, "attention_head_dim": 128, "pooled_projection_dim": 1536,
              "text_embed_dim": 4096, "time_embed_dim": 256, "in_channels": 12, "qk_norm": "rms_norm"}  # fmt: skip
SMOKE_BLOCK = {"num_attention_heads": 2, "attention_head_dim": 32, "pooled_projection_dim": 64, "text_embed_dim": 64,
               "time_embed_dim": 32, "in_channels": 12}  # fmt: skip


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def forward_backward(model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**inputs, return_dict=False)[0]
    out.float().square().mean().backward()
    return out.detach(), {n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None}


def median_seconds(model, inputs, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        forward_backward(model, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, toy model, SDPA on both sides")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=37)
    parser.add_argument("--valid_tokens", type=int, default=77)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="", help="append the JSON line to this file too")
    args = parser.parse_args()

    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    block = SMOKE_BLOCK if args.smoke else FULL_BLOCK
    frames, height, width = (7, 32, 48) if args.smoke else (args.frames, 480, 848)
    torch.manual_seed(0)
    with torch.device(device):
        sdpa_model = MochiTransformer3DModel(num_layers=args.layers, **block).to(dtype)
    flash_model = copy.deepcopy(sdpa_model)
    if args.smoke:
        _set_processor(flash_model, MochiUlyssesAttnProcessor(None, "sdpa"))
    else:
        MochiAdapter.__new__(MochiAdapter).set_attention(flash_model, None, "flash")

    g = torch.Generator(device).manual_seed(1)
    text = 8 if args.smoke else 256
    mask = torch.zeros(1, text, dtype=torch.bool, device=device)
    mask[:, : min(args.valid_tokens, text)] = True
    inputs = dict(
        hidden_states=torch.randn(
            1, 12, (frames - 1) // 6 + 1, height // 8, width // 8, generator=g, device=device
        ),
        encoder_hidden_states=torch.randn(1, text, block["text_embed_dim"], generator=g, device=device),
        timestep=torch.tensor([500.0], device=device),
        encoder_attention_mask=mask,
    )
    inputs = {k: v.to(dtype) if v.is_floating_point() and k != "timestep" else v for k, v in inputs.items()}
    ref_out, ref_grads = forward_backward(sdpa_model, inputs)
    out, grads = forward_backward(flash_model, inputs)
    grad_errors = {n: relative_error(grads[n], ref_grads[n]) for n in ref_grads}
    worst = max(grad_errors, key=grad_errors.get)
    result = {
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
        "job": "mochi_attention_flash_vs_sdpa",
        "layers": args.layers,
        "frames": frames,
        "height": height,
        "width": width,
        "dtype": str(dtype).removeprefix("torch."),
        "output_rel_error": relative_error(out, ref_out),
        "grad_rel_error_max": grad_errors[worst],
        "grad_rel_error_worst_param": worst,
        "s_fwd_bwd_sdpa": median_seconds(sdpa_model, inputs, args.repeats, device),
        "s_fwd_bwd_flash": median_seconds(flash_model, inputs, args.repeats, device),
        "bf16_eps": torch.finfo(torch.bfloat16).eps,
        "date": datetime.date.today().isoformat(),
    }
    result["sdpa_over_flash_time"] = result["s_fwd_bwd_sdpa"] / result["s_fwd_bwd_flash"]
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
