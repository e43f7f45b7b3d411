"""fastvideo: post-training for video diffusion transformers (preprocess, fine-tune, distill, sample)."""

__version__ = "0.1.0"
