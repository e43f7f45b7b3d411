"""Build the embedded tiny default: a small random model in the exact diffusers layout of the real one.

    python -m fastvideo.models.tiny --model_type mochi --output data/tiny-mochi

writes ``model_index.json`` plus ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and
``scheduler/``, deterministically from ``--seed`` and without any network access. The same
loading code then serves this directory and ``genmo/mochi-1-preview``; every script defaults to it
so the whole pipeline runs on a CPU laptop. The weights are random, so its videos are noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fastvideo.io import atomic_dir

TINY_MARKER = "fastvideo_tiny.json"

# Words of the synthetic captions plus common caption words get their own token; any other word
# falls back to single characters, so every prompt tokenizes.
_WORDS = (
    "a an the of and with in on at to from is are moving left right up down across slowly quickly "
    "red green blue yellow purple orange white black grey gray pink brown dark light bright "
    "circle square triangle ball box shape star background video clip scene camera cat dog man "
    "woman person walks runs grass street city sky water tree car house night day realistic style"
).split()
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/"


# The one tiny Mochi DiT config: the embedded model and every test that builds a DiT use it.
TINY_MOCHI_DIT = dict(
    patch_size=2,
    num_attention_heads=4,
    attention_head_dim=16,
    num_layers=2,
    pooled_projection_dim=32,
    in_channels=12,
    text_embed_dim=32,
    time_embed_dim=32,
    max_sequence_length=256,
)


def build_t5_tokenizer(model_max_length: int = 256):
    """A T5 tokenizer (pad=0, eos=1, unk=2, appends </s>) from a fixed Unigram vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(f"▁{w}", -2.0) for w in _WORDS]
    vocab += [(c, -6.0) for c in _CHARS]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        extra_ids=0,
        model_max_length=model_max_length,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def build_tiny_mochi(seed: int = 0):
    """A MochiPipeline with a 2-block DiT (4 heads x 16), a 32-channel VAE and a 2-layer T5."""
    from diffusers import (
        AutoencoderKLMochi,
        FlowMatchEulerDiscreteScheduler,
        MochiPipeline,
        MochiTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    torch.manual_seed(seed + 1)
    transformer = MochiTransformer3DModel(**TINY_MOCHI_DIT)
    torch.manual_seed(seed + 2)
    # Same temporal (6x) and spatial (8x) compression as the real VAE, so latent shapes follow
    # the real rule; GroupNorm needs channel counts divisible by 32.
    vae = AutoencoderKLMochi(
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        add_attention_block=(False, False, False, False, False),
    )
    # Mochi's timesteps run reversed: the transformer sees 1000 * (1 - sigma).
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    return MochiPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


TINY_BUILDERS = {"mochi": build_tiny_mochi}


def is_built(output: Path, model_type: str, seed: int) -> bool:
    marker = output / TINY_MARKER
    if not (marker.is_file() and (output / "model_index.json").is_file()):
        return False
    return json.loads(marker.read_text()) == {"model_type": model_type, "seed": seed}


def build_tiny(model_type: str, output: str | Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny pipeline to ``output`` atomically (built in a temp folder, then renamed)."""
    if model_type not in TINY_BUILDERS:
        raise ValueError(f"no tiny model for {model_type!r}; available: {', '.join(TINY_BUILDERS)}")
    output = Path(output)
    if is_built(output, model_type, seed) and not overwrite:
        return output
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"{output} exists and is not a tiny {model_type} model with seed {seed}; pass --overwrite"
        )
    with atomic_dir(output) as staging:
        pipe = TINY_BUILDERS[model_type](seed)
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / TINY_MARKER).write_text(json.dumps({"model_type": model_type, "seed": seed}))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_type", default="mochi", choices=sorted(TINY_BUILDERS))
    parser.add_argument("--output", default="data/tiny-mochi", help="directory to write (diffusers layout)")
    parser.add_argument("--seed", type=int, default=0, help="weights are a function of this seed alone")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    args = parser.parse_args(argv)
    try:
        already = is_built(Path(args.output), args.model_type, args.seed) and not args.overwrite
        path = build_tiny(args.model_type, args.output, seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"tiny {args.model_type} model {'already at' if already else 'written to'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
