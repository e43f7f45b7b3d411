"""Phased consistency distillation (PCM) of video DiTs.

``fastvideo.distill.pcm`` holds the schedule math (solver grid, phases, loss, sampling scheduler);
``fastvideo.distill.distiller`` the training loop; run it with ``python -m fastvideo.distill --help``.
"""
