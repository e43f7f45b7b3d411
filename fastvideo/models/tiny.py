"""Build the embedded tiny default: a small model in the exact diffusers layout of the real one.

    python -m fastvideo.models.tiny --model_type mochi --output data/tiny-mochi
    python -m fastvideo.models.tiny --model_type wan      # --output defaults to data/tiny-<model_type>
    python -m fastvideo.models.tiny --model_type hunyuan  # HunyuanVideo (random VAE)

writes ``model_index.json`` plus ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and
``scheduler/``, deterministically from ``--seed`` and without any network access. The same
loading code then serves this directory and ``genmo/mochi-1-preview`` (or, for ``wan``,
``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``); every script defaults to it so the whole pipeline runs on a
CPU laptop.

The VAE is trained: its weights ship in ``assets/tiny-mochi-vae/`` (made by
``scripts/train_tiny_vae.py`` on the synthetic clips of ``fastvideo.data_preprocess.synthetic``), so
latents decode back to pictures (held-out clips, 25 frames at 64x96: 27.2 dB, colours,
positions and motion right, corners of squares and triangles rounded; tests/test_tiny_vae.py checks
25 dB and reads colour and direction back) and its ``latents_mean`` / ``latents_std`` normalise them
to about zero mean and unit variance per channel. The DiT and the T5 encoder are random (seeded), so
samples of the untrained DiT are still noise, decoded by a working VAE. A folder built before (a
random VAE, or other VAE weights) is rebuilt: the marker records ``TINY_FORMAT`` and the VAE's hash.

The tiny Wan 2.1 model is built the same way: a 4-block ``WanTransformer3DModel`` (8 heads x 16),
a 2-layer UMT5 encoder with the same tokenizer (512 tokens, as ``WanPipeline`` encodes), Wan 2.1's
UniPC flow scheduler (flow shift 3, as in the 1.3B folder) and the trained ``AutoencoderKLWan`` of
``assets/tiny-wan-vae/`` (``scripts/train_tiny_vae.py --model_type wan``; the real 4x temporal and
8x spatial compression, 16 latent channels; held-out clips, 25 frames at 64x96: 27.4 dB, colours
and motion right, shapes rounder and softer than drawn). ``--variant a14b`` lays it out as Wan 2.2
A14B: two such DiTs split by noise level (``transformer``, ``transformer_2``, ``boundary_ratio``
0.875, flow shift 12); ``--variant i2v`` as Wan 2.1 image-to-video (``WanImageToVideoPipeline``:
36 input channels, CLIP image tokens in the cross-attention, a tiny CLIP vision tower).

The tiny HunyuanVideo (``--model_type hunyuan``, ``HunyuanVideoPipeline``): a 2+2-block
``HunyuanVideoTransformer3DModel`` (dual- then single-stream, 4 heads x 16, guidance embedding), a
3-layer Llama with a tokenizer that makes the pipeline's prompt template's system part the 95 tokens
it crops, a 2-layer CLIP text tower (pooled prompt), Euler with flow shift 7 as the real folder, and an
``AutoencoderKLHunyuanVideo`` with the real compression (4x time, 8x space, 16 channels) whose
weights are random (seeded), not trained: its latents decode to noise. ``--variant i2v`` lays it out as
HunyuanVideo-I2V (``HunyuanVideoImageToVideoPipeline``): the DiT with ``image_condition_type``
token_replace and a tiny Llava text encoder whose CLIP vision tower turns the first frame into the 576
image tokens, and whose tokenizer the 103 cropped tokens, of the pipeline's default template.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from fastvideo.io import atomic_dir

TINY_MARKER = "fastvideo_tiny.json"
# Part of the marker: bump it whenever the same seed builds different weights, so folders built
# before are rebuilt. 2: the VAE is the trained one from assets/ (1 had a random VAE). 3: the VAE
# keeps colours (64 channels in the encoder's last level). 4: the DiT has 4 blocks of 8 heads.
TINY_FORMAT = 4

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
# 4 blocks of 8 heads x 16 (1.46M parameters): fine-tuned on the 84 synthetic captions it draws their
# colour and motion, where a 2-block, 4-head one (0.19M) does not (docs/benchmarks.md).
TINY_MOCHI_DIT = dict(
    patch_size=2,
    num_attention_heads=8,
    attention_head_dim=16,
    num_layers=4,
    pooled_projection_dim=64,
    in_channels=12,
    text_embed_dim=32,
    time_embed_dim=64,
    max_sequence_length=256,
)

# The one tiny Mochi VAE architecture: build_tiny_mochi loads the weights scripts/train_tiny_vae.py
# trained for it. Same temporal (6x) and spatial (8x) compression as the real VAE, so latent shapes
# follow the real rule; GroupNorm needs channel counts divisible by 32. The encoder's last level has
# 64 channels, so its final GroupNorm (32 groups) normalises channels in pairs and colour survives
# it (see init_colour_paths in scripts/train_tiny_vae.py).
TINY_MOCHI_VAE = dict(
    encoder_block_out_channels=(32, 32, 32, 64),
    decoder_block_out_channels=(32, 32, 32, 32),
    layers_per_block=(1, 1, 1, 1, 1),
    add_attention_block=(False, False, False, False, False),
)

# The one tiny Wan 2.1 DiT config, the counterpart of TINY_MOCHI_DIT (4 blocks of 8 heads x 16,
# 0.96M parameters). A head of 16 splits into Wan's RoPE bands as 8 (time) + 4 + 4 (height, width);
# text_dim is the tiny UMT5's d_model and in/out channels the tiny Wan VAE's z_dim.
TINY_WAN_DIT = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=8,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=64,
    ffn_dim=256,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=1024,
)

# The one tiny Wan 2.1 VAE architecture (AutoencoderKLWan, 0.67M parameters): the real levels,
# strides and 16 latent channels (4x temporal, 8x spatial compression, 4k+1 frames) at 1/12 of the
# real width: 8 channels at full resolution, 16 and 32 below. Wan's VAE has causal 3x3x3 convs at full
# resolution in both encoder and decoder, so their width sets the CPU cost of training it. Like
# Mochi's, it trains from a start that already passes colour (init_wan_paths in
# scripts/train_tiny_vae.py). Lists, not tuples: the constructor concatenates them with lists.
TINY_WAN_VAE = dict(
    base_dim=8,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
)
# In the repository beside the package (found by an editable install, which scripts/setup.sh makes).
TINY_MOCHI_VAE_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny-mochi-vae"
TINY_WAN_VAE_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny-wan-vae"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
# Rough wall time of `scripts/train_tiny_vae.py --model_type <type>` on one CPU core, for the error
# message that asks for it.
_TRAIN_MINUTES = {"mochi": 12, "wan": 20}
_FAMILY_NAMES = {"mochi": "Mochi", "wan": "Wan"}


def build_t5_tokenizer(model_max_length: int = 256):
    """A T5 tokenizer (pad=0, eos=1, unk=2, appends </s>) from a fixed Unigram vocabulary.

    Mochi's pipeline encodes 256 tokens and Wan's 512; the vocabulary is the same.
    """
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


def tiny_vae_spec(model_type: str) -> tuple[str, dict, Path]:
    """(diffusers class name, architecture, folder) of a family's trained tiny VAE.

    Read when called rather than stored, so a test can point the folder elsewhere.
    """
    specs = {
        "mochi": ("AutoencoderKLMochi", TINY_MOCHI_VAE, TINY_MOCHI_VAE_DIR),
        "wan": ("AutoencoderKLWan", TINY_WAN_VAE, TINY_WAN_VAE_DIR),
    }
    return specs[model_type]


def _train_command(model_type: str) -> str:
    option = "" if model_type == "mochi" else f" --model_type {model_type}"
    return f"OMP_NUM_THREADS=1 python scripts/train_tiny_vae.py{option}"


def check_tiny_vae(model_type: str, path: Path | None = None) -> Path:
    """The folder of a trained tiny VAE (default: the shipped one); FileNotFoundError naming the fix."""
    path = tiny_vae_spec(model_type)[2] if path is None else Path(path)
    missing = [name for name in VAE_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the trained tiny {_FAMILY_NAMES[model_type]} VAE is missing ({', '.join(missing)} not in {path}); "
            f"make it with `{_train_command(model_type)}` "
            f"(about {_TRAIN_MINUTES[model_type]} min on one CPU core)"
        )
    return path


def _as_tuple(value):
    # Configs come back from JSON with lists; TINY_MOCHI_VAE holds tuples, TINY_WAN_VAE lists.
    return tuple(value) if isinstance(value, (list, tuple)) else value


def load_tiny_vae(model_type: str, path: Path | None = None):
    """A trained tiny VAE (float32), refusing weights made for another architecture."""
    import diffusers

    class_name, architecture, _ = tiny_vae_spec(model_type)
    path = check_tiny_vae(model_type, path)
    vae = getattr(diffusers, class_name).from_pretrained(path, torch_dtype=torch.float32)
    wrong = [k for k, v in architecture.items() if _as_tuple(vae.config[k]) != _as_tuple(v)]
    if wrong:
        raise ValueError(
            f"{path} is not a tiny {_FAMILY_NAMES[model_type]} VAE ({', '.join(wrong)} differ from "
            f"TINY_{model_type.upper()}_VAE); retrain it with `{_train_command(model_type)}`"
        )
    return vae


def tiny_vae_digest(model_type: str, path: Path | None = None) -> str:
    """sha256 of a trained VAE's files: the built model's marker records it."""
    path = check_tiny_vae(model_type, path)
    digest = hashlib.sha256()
    for name in VAE_FILES:
        digest.update((path / name).read_bytes())
    return digest.hexdigest()


def check_tiny_mochi_vae(path: Path | None = None) -> Path:
    return check_tiny_vae("mochi", path)


def load_tiny_mochi_vae(path: Path | None = None):
    return load_tiny_vae("mochi", path)


def tiny_mochi_vae_digest(path: Path | None = None) -> str:
    return tiny_vae_digest("mochi", path)


def tiny_t5_config(config_class, vocab_size: int):
    """The 2-layer, 32-wide T5 (or UMT5) encoder config of the tiny models."""
    return config_class(
        vocab_size=vocab_size,
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


def build_tiny_mochi(seed: int = 0):
    """A MochiPipeline with a 4-block DiT (8 heads x 16), the trained tiny VAE and a 2-layer T5."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        MochiPipeline,
        MochiTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(tiny_t5_config(T5Config, len(tokenizer)))
    torch.manual_seed(seed + 1)
    transformer = MochiTransformer3DModel(**TINY_MOCHI_DIT)
    vae = load_tiny_vae("mochi")
    # Mochi's timesteps run reversed: the transformer sees 1000 * (1 - sigma).
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    return MochiPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def build_tiny_wan(seed: int = 0):
    """A WanPipeline with a 4-block DiT (8 heads x 16), the trained tiny Wan VAE and a 2-layer UMT5."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    # WanPipeline pads prompts to 512 tokens (the tokenizer's length for AutoTokenizer users).
    tokenizer = build_t5_tokenizer(model_max_length=512)
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(tiny_t5_config(UMT5Config, len(tokenizer)))
    torch.manual_seed(seed + 1)
    transformer = WanTransformer3DModel(**TINY_WAN_DIT)
    vae = load_tiny_vae("wan")
    # What Wan2.1-T2V-1.3B-Diffusers ships: UniPC on flow sigmas, shifted by 3 (480p). Time runs
    # forward: the transformer sees 1000 * sigma.
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )


WAN_A14B_BOUNDARY, WAN_A14B_FLOW_SHIFT = 0.875, 12.0  # Wan2.2-T2V-A14B's


def build_tiny_wan_a14b(seed: int = 0):
    """Wan 2.2 A14B's layout at tiny size: two DiTs split by noise level (``transformer`` for timesteps
    >= boundary_ratio * 1000, ``transformer_2`` below), as Wan2.2-T2V-A14B-Diffusers ships them: boundary
    0.875 and flow shift 12. Each expert is the tiny Wan DiT; they start from different seeds."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    one = build_tiny_wan(seed)
    torch.manual_seed(seed + 2)
    low = WanTransformer3DModel(**TINY_WAN_DIT)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=WAN_A14B_FLOW_SHIFT
    )
    return WanPipeline(
        tokenizer=one.tokenizer, text_encoder=one.text_encoder, vae=one.vae, scheduler=scheduler,
        transformer=one.transformer, transformer_2=low, boundary_ratio=WAN_A14B_BOUNDARY,
    )  # fmt: skip


# The tiny CLIP vision tower of the image-to-video model: 2 layers, 32 wide, 32x32 pixels in 8x8
# patches (16 patch tokens + 1 class token; Wan 2.1 I2V's CLIP ViT-H/14 gives 257 of 1280).
TINY_CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)


def build_tiny_wan_i2v(seed: int = 0):
    """Wan 2.1 image-to-video's layout at tiny size (``WanImageToVideoPipeline``): the tiny Wan with
    36 input channels (16 noisy latents, 4 first-frame mask channels, 16 latents of the first frame
    followed by zeros), an image embedder and image key/value projections in every cross-attention
    for the CLIP image tokens, and a tiny ``CLIPVisionModel`` with its ``CLIPImageProcessor``."""
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    one = build_tiny_wan(seed)
    torch.manual_seed(seed + 3)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP_VISION))
    side = TINY_CLIP_VISION["image_size"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    inner = TINY_WAN_DIT["num_attention_heads"] * TINY_WAN_DIT["attention_head_dim"]
    torch.manual_seed(seed + 1)
    transformer = WanTransformer3DModel(
        **{**TINY_WAN_DIT, "in_channels": 36},
        image_dim=TINY_CLIP_VISION["hidden_size"],
        added_kv_proj_dim=inner,
    )
    return WanImageToVideoPipeline(
        tokenizer=one.tokenizer, text_encoder=one.text_encoder, vae=one.vae, scheduler=one.scheduler,
        image_processor=image_processor, image_encoder=image_encoder, transformer=transformer,
    )  # fmt: skip


# The one tiny HunyuanVideo DiT config: 2 dual-stream and 2 single-stream blocks of 4 heads x 16. A head
# of 16 splits into HunyuanVideo's RoPE axes as 4 (time) + 6 + 6 (height, width), the real (16, 56, 56)
# in the same proportion; text_embed_dim is the tiny Llama's width, pooled_projection_dim the tiny
# CLIP's, in/out channels the VAE's 16 latent channels.
TINY_HUNYUAN_DIT = dict(
    in_channels=16,
    out_channels=16,
    num_attention_heads=4,
    attention_head_dim=16,
    num_layers=2,
    num_single_layers=2,
    num_refiner_layers=1,
    mlp_ratio=2.0,
    patch_size=2,
    patch_size_t=1,
    guidance_embeds=True,
    text_embed_dim=32,
    pooled_projection_dim=32,
    rope_axes_dim=(4, 6, 6),
)

# The tiny AutoencoderKLHunyuanVideo: the real 4x temporal and 8x spatial compression and 16 latent
# channels, 32 channels at every level, one layer per block. Its weights are random (seeded), not
# trained like the Mochi and Wan ones: latents decode to noise.
TINY_HUNYUAN_VAE = dict(
    latent_channels=16,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=32,
    mid_block_add_attention=False,
)

# HunyuanVideoPipeline crops the first 95 tokens (its template's system part, as Llama 3 tokenizes it)
# from every encoded prompt; the tiny tokenizer tokenizes that part into as many.
_LLAMA_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<unk>")  # fmt: skip
# Template words the tiny vocabulary leaves out (spelled in characters), so the system part is 95 tokens.
_LLAMA_SPELLED = ("by",)


def build_llama_tokenizer(prompt_template: dict | None = None):
    """A tokenizer for the tiny Llama, saved as Llama 3 saves its own (``PreTrainedTokenizerFast``).

    Words (the synthetic captions' and the pipeline's prompt template's) are tokens, other words
    fall back to characters, ``\\n\\n`` is one token, and Llama 3's header tokens are special, so the
    template's system part is exactly the tokens the pipeline crops (``crop_start``: 95 for
    ``HunyuanVideoPipeline``'s template, the default). With image-to-video's template
    (``HunyuanVideoImageToVideoPipeline``'s, 103) ``<image>`` is a special token too, at the template's
    ``image_emb_start``, as in llava-llama-3's tokenizer. Prompts are padded on the right with
    ``<|end_of_text|>`` (the DiT reads the mask as a prefix of valid tokens).
    """
    import re

    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    prompt_template = prompt_template or DEFAULT_PROMPT_TEMPLATE
    template = prompt_template["template"]
    image_token = ["<image>"] if "<image>" in template else []
    words = [w for w in dict.fromkeys([*_WORDS, *re.findall(r"\w+", template)]) if w not in _LLAMA_SPELLED]
    vocab = [(t, 0.0) for t in _LLAMA_SPECIAL] + [("\n\n", -1.0), ("\n", -3.0)]
    vocab += [(w, -2.0) for w in words] + [(c, -6.0) for c in _CHARS if c not in words]
    backend = Tokenizer(models.Unigram(vocab, unk_id=_LLAMA_SPECIAL.index("<unk>"), byte_fallback=False))
    # Words, runs of punctuation and runs of newlines; spaces are dropped.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n+"), behavior="removed", invert=True)
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        unk_token="<unk>",
        additional_special_tokens=[*_LLAMA_SPECIAL[2:5], *image_token],
        padding_side="right",
        model_max_length=1024,
    )
    system = tokenizer(template.split("{}")[0]).input_ids
    if len(system) != prompt_template["crop_start"]:
        raise RuntimeError(
            f"the tiny Llama tokenizer makes {len(system)} tokens of the template's system part, not "
            f"{prompt_template['crop_start']}"
        )
    if (
        image_token
        and system.index(tokenizer.convert_tokens_to_ids("<image>")) != prompt_template["image_emb_start"]
    ):
        raise RuntimeError(
            "the tiny Llama tokenizer puts <image> elsewhere than the template's image_emb_start"
        )
    return tokenizer


def build_clip_tokenizer():
    """A CLIP tokenizer (byte-level BPE, lowercase, 77 tokens) whose merges spell the caption words."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols
    vocab = [*symbols, *(s + "</w>" for s in symbols)]
    merges = []
    for word in _WORDS:  # left to right: ((w0 w1) w2) ... wn</w>
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            pair = (merged, piece)
            if pair not in merges:
                merges.append(pair)
            merged += piece
            if merged not in vocab:
                vocab.append(merged)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)


def build_tiny_hunyuan(seed: int = 0):
    """A HunyuanVideoPipeline with a 2+2-block DiT (4 heads x 16), a 3-layer Llama, a 2-layer CLIP text
    tower and a random tiny VAE (``TINY_HUNYUAN_VAE``: not trained, so samples decode to noise)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer, tokenizer_2 = build_llama_tokenizer(), build_clip_tokenizer()
    torch.manual_seed(seed)
    # Three layers: the pipeline takes the hidden states two layers before the last.
    text_encoder = LlamaModel(
        LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    )  # fmt: skip
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(tokenizer_2), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                       bos_token_id=tokenizer_2.bos_token_id, eos_token_id=tokenizer_2.eos_token_id,
                       pad_token_id=tokenizer_2.pad_token_id)
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    transformer = HunyuanVideoTransformer3DModel(**TINY_HUNYUAN_DIT)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLHunyuanVideo(**TINY_HUNYUAN_VAE)
    # hunyuanvideo-community/HunyuanVideo's scheduler: Euler on flow sigmas shifted by 7, forward time.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae, scheduler=scheduler,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    )  # fmt: skip


# The tiny Llava's CLIP vision tower (HunyuanVideo image-to-video's text encoder sees the first frame): 2 layers,
# 32 wide, at llava-llama-3-8b's geometry, 336x336 pixels in 14x14 patches, so the first frame becomes the
# 576 image tokens HunyuanVideoImageToVideoPipeline's default prompt template expects (image_emb_len).
TINY_LLAVA_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=336,
    patch_size=14,
)


def build_tiny_hunyuan_i2v(seed: int = 0):
    """HunyuanVideo image-to-video's layout at tiny size (``HunyuanVideoImageToVideoPipeline``, as
    ``hunyuanvideo-community/HunyuanVideo-I2V``): the tiny DiT with ``image_condition_type`` token_replace
    (the first latent frame is the image's, modulated as timestep 0), a tiny Llava (the 3-layer Llama with
    a tiny CLIP vision tower at 336 px in 14 px patches: 576 image tokens) whose tokenizer makes the
    pipeline's default template exactly (103 tokens cropped, ``<image>`` at 5), its ``CLIPImageProcessor``,
    the CLIP text tower and the random VAE of :func:`build_tiny_hunyuan`."""
    from diffusers import HunyuanVideoImageToVideoPipeline, HunyuanVideoTransformer3DModel
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    one = build_tiny_hunyuan(seed)
    tokenizer = build_llama_tokenizer(DEFAULT_PROMPT_TEMPLATE)
    # 103 cropped + 256 prompt tokens, with the image token expanded to 576.
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    text_encoder = LlavaForConditionalGeneration(
        LlavaConfig(
            text_config=text_config,
            vision_config=CLIPVisionConfig(**TINY_LLAVA_VISION),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            pad_token_id=tokenizer.pad_token_id,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
        )
    )
    side = TINY_LLAVA_VISION["image_size"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    torch.manual_seed(seed + 1)
    transformer = HunyuanVideoTransformer3DModel(**TINY_HUNYUAN_DIT, image_condition_type="token_replace")
    return HunyuanVideoImageToVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=one.vae,
        scheduler=one.scheduler, text_encoder_2=one.text_encoder_2, tokenizer_2=one.tokenizer_2,
        image_processor=image_processor,
    )  # fmt: skip


# The one tiny CogVideoX DiT config (4 blocks of 4 heads x 16, 0.34M parameters): rotary positions as
# CogVideoX-5b (a head of 16 splits into RoPE bands of 4 (time) + 6 + 6), text_embed_dim the tiny
# T5's d_model, and the sample size (in latents) that of the tests' 13 frames at 32x48.
TINY_COGVIDEOX_DIT = dict(
    num_attention_heads=4,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    time_embed_dim=32,
    text_embed_dim=32,
    num_layers=4,
    sample_width=6,
    sample_height=4,
    sample_frames=13,
    max_text_seq_length=226,
    use_rotary_positional_embeddings=True,
)
# A tiny AutoencoderKLCogVideoX: 4 levels (8x spatial, 4x temporal compression, 4k+1 frames) of 16
# channels and 16 latent channels. Random weights: latents of real clips do not decode to pictures yet.
TINY_COGVIDEOX_VAE = dict(
    block_out_channels=(16, 16, 16, 16),
    latent_channels=16,
    layers_per_block=1,
    norm_num_groups=8,
    temporal_compression_ratio=4,
    down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4,
)


def cogvideox_scheduler(snr_shift_scale: float):
    """The scheduler the CogVideoX folders ship: DDIM, v-prediction, scaled-linear betas with the SNR shift
    (2b: 3.0, 5b: 1.0), rescaled to zero terminal SNR, trailing timesteps."""
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=snr_shift_scale, timestep_spacing="trailing",
    )  # fmt: skip


# What each tiny CogVideoX variant changes in the DiT config.
COGVIDEOX_VARIANT_DIT = {
    "": {},
    # 2B: sinusoidal positions added in the patch embedding instead of RoPE.
    "2b": {"use_rotary_positional_embeddings": False},
    # 5B-I2V: the first frame's latents beside the noisy ones (32 channels in) and learned positions,
    # which fix the sample size (13 frames at 32x48 here, 49 at 480x720 for the real one).
    "i2v": {"in_channels": 32, "use_learned_positional_embeddings": True},
    # 1.5: latent frames patched in pairs (temporal patch 2), no patch-embedding bias, and CogVideoX1.5-5B's
    # sample size, which bounds the RoPE grid it slices from (300 latents square).
    "1.5": {
        "patch_size_t": 2,
        "patch_bias": False,
        "sample_height": 300,
        "sample_width": 300,
        "sample_frames": 81,
    },
}


def build_tiny_cogvideox(seed: int = 0, variant: str = ""):
    """A CogVideoXPipeline laid out as CogVideoX-5b (rotary positions, SNR shift 1, VAE scaling 0.7); with
    ``variant="2b"`` as CogVideoX-2b (sinusoidal positions, SNR shift 3, VAE scaling 1.15258426); with
    ``"i2v"`` a CogVideoXImageToVideoPipeline as CogVideoX-5b-I2V; with ``"1.5"`` as CogVideoX1.5-5B (temporal
    patch 2: 4k+1 frames with k+1 even). A 4-block DiT, a random tiny VAE and
    the 2-layer T5 at 226 tokens."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    two_b = variant == "2b"
    tokenizer = build_t5_tokenizer(model_max_length=226)
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(tiny_t5_config(T5Config, len(tokenizer)))
    torch.manual_seed(seed + 1)
    transformer = CogVideoXTransformer3DModel(**{**TINY_COGVIDEOX_DIT, **COGVIDEOX_VARIANT_DIT[variant]})
    torch.manual_seed(seed + 4)
    vae = AutoencoderKLCogVideoX(**TINY_COGVIDEOX_VAE, scaling_factor=1.15258426 if two_b else 0.7)
    pipeline = CogVideoXImageToVideoPipeline if variant == "i2v" else CogVideoXPipeline
    return pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=cogvideox_scheduler(3.0 if two_b else 1.0),
    )  # fmt: skip


def build_tiny_cogvideox_2b(seed: int = 0):
    return build_tiny_cogvideox(seed, variant="2b")


def build_tiny_cogvideox_i2v(seed: int = 0):
    return build_tiny_cogvideox(seed, variant="i2v")


def build_tiny_cogvideox_15(seed: int = 0):
    return build_tiny_cogvideox(seed, variant="1.5")


# (model type, variant) -> builder; the variant "" is the family's default tiny model.
TINY_BUILDERS = {
    ("mochi", ""): build_tiny_mochi,
    ("wan", ""): build_tiny_wan,
    ("wan", "a14b"): build_tiny_wan_a14b,
    ("wan", "i2v"): build_tiny_wan_i2v,
    ("cogvideox", ""): build_tiny_cogvideox,
    ("cogvideox", "2b"): build_tiny_cogvideox_2b,
    ("cogvideox", "i2v"): build_tiny_cogvideox_i2v,
    ("cogvideox", "1.5"): build_tiny_cogvideox_15,
    ("hunyuan", ""): build_tiny_hunyuan,
    ("hunyuan", "i2v"): build_tiny_hunyuan_i2v,
}
VARIANTS = {
    "": "the family's default",
    "a14b": "Wan 2.2 A14B: two noise-level experts",
    "i2v": "image-to-video (Wan 2.1 I2V, CogVideoX-5b-I2V, HunyuanVideo-I2V)",
    "2b": "CogVideoX-2b: sinusoidal positions, SNR shift 3",
    "1.5": "CogVideoX 1.5: temporal patch 2",
}
# What else, besides the seed, the built weights depend on.
TINY_INPUTS = {
    "mochi": lambda: {"vae_sha256": tiny_vae_digest("mochi")},
    "wan": lambda: {"vae_sha256": tiny_vae_digest("wan")},
    "hunyuan": dict,  # the VAE is random too: the seed alone
    "cogvideox": dict,  # random VAE: the seed alone
}


def tiny_marker(model_type: str, seed: int, variant: str = "") -> dict:
    marker = {"model_type": model_type, "seed": seed, "format": TINY_FORMAT, **TINY_INPUTS[model_type]()}
    return {**marker, "variant": variant} if variant else marker


def _read_marker(output: Path) -> dict | None:
    marker = output / TINY_MARKER
    if not (marker.is_file() and (output / "model_index.json").is_file()):
        return None
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def is_built(output: Path, model_type: str, seed: int, variant: str = "") -> bool:
    return _read_marker(output) == tiny_marker(model_type, seed, variant)


def is_stale(output: Path, model_type: str, seed: int, variant: str = "") -> bool:
    """A tiny model this module built for ``model_type``, ``variant`` and ``seed`` from older weights
    (e.g. a random VAE)."""
    found = _read_marker(output) or {}
    wanted = {"model_type": model_type, "seed": seed, "variant": variant}
    return bool(found) and all(found.get(k, "") == v for k, v in wanted.items())


def build_tiny(
    model_type: str, output: str | Path, *, seed: int = 0, overwrite: bool = False, variant: str = ""
) -> Path:
    """Write the tiny pipeline to ``output`` atomically (built in a temp folder, then renamed).

    A folder holding this model already is kept; one holding a stale build of it (same type,
    variant and seed, older format or other VAE weights) is rebuilt; anything else needs ``overwrite``.
    """
    if (model_type, variant) not in TINY_BUILDERS:
        available = ", ".join(f"{t} {v}".strip() for t, v in TINY_BUILDERS)
        raise ValueError(f"no tiny model for {model_type!r} {variant!r}; available: {available}")
    output = Path(output)
    name = f"{model_type} {variant}".strip()
    if is_built(output, model_type, seed, variant) and not overwrite:
        return output
    if output.exists() and not overwrite and not is_stale(output, model_type, seed, variant):
        raise FileExistsError(
            f"{output} exists and is not a tiny {name} model with seed {seed}; pass --overwrite"
        )
    with atomic_dir(output) as staging:
        pipe = TINY_BUILDERS[(model_type, variant)](seed)
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / TINY_MARKER).write_text(json.dumps(tiny_marker(model_type, seed, variant)))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_type", default="mochi", choices=sorted({t for t, _ in TINY_BUILDERS}))
    parser.add_argument(
        "--variant",
        default="",
        choices=sorted(VARIANTS),
        help="; ".join(f"{v or repr('')}: {what}" for v, what in VARIANTS.items()),
    )
    parser.add_argument(
        "--output",
        default=None,
        help="directory to write (diffusers layout; default data/tiny-<model_type>[-<variant>])",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="DiT and T5 weights are a function of this seed alone"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = f"data/tiny-{args.model_type}" + (f"-{args.variant}" if args.variant else "")
    try:
        already = is_built(Path(args.output), args.model_type, args.seed, args.variant) and not args.overwrite
        path = build_tiny(
            args.model_type, args.output, seed=args.seed, overwrite=args.overwrite, variant=args.variant
        )
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = f"{args.model_type} {args.variant}".strip()
    print(f"tiny {name} model {'already at' if already else 'written to'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
