"""Datasets and samplers that feed the trainer from preprocessed latents.

    from fastvideo.dataset import LatentDataset, ShapeBucketSampler, collate

See ``fastvideo.dataset.latent_dataset`` for the layout read and the sampling guarantees.
"""

from fastvideo.dataset.latent_dataset import BatchPrefetcher, LatentDataset, ShapeBucketSampler, collate

__all__ = ["BatchPrefetcher", "LatentDataset", "ShapeBucketSampler", "collate"]
