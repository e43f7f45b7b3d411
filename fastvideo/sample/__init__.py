"""Sampling: the Euler denoising loop shared by validation, benchmarks and the samplers."""
