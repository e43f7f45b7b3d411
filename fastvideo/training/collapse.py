"""Collapse guards: validation's diversity across seeds and its motion, held against a reference's.

A distilled or fine-tuned video model can collapse: every seed draws the same clip, or the clip stands
still (users of DMD tools report static and solid-colour video). Validation samples each prompt with
``--validation_seeds`` seeds and measures, on the final latents [1, C, T, H, W]:

* diversity: mean |a - b| over every pair of one prompt's samples;
* motion: mean |latent frame t+1 - frame t| over the prompt's samples.

With ``--collapse_fraction`` f > 0 the run measures a reference once, before its first step (the
frozen teacher when distilling, the model as loaded when fine-tuning; ``Trainer.collapse_reference``)
and stops with a ``TrainingError`` that names the measure, the pass and the last validated step that
passed, as soon as a validation pass's mean diversity or motion falls below f times the reference's.
The reference and the last step that passed are kept in ``validation/guard.json``, so a resumed run
holds the same line.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fastvideo.io import atomic_write_json

GUARD_FILE = "guard.json"


def diversity(samples: list[torch.Tensor]) -> float:
    """Mean |a - b| over every pair of one prompt's samples (NaN for a single sample)."""
    pairs = [(a - b).abs().mean() for i, a in enumerate(samples) for b in samples[i + 1 :]]
    return float(torch.stack(pairs).mean()) if pairs else float("nan")


def motion(samples: list[torch.Tensor]) -> float:
    """Mean |frame t+1 - frame t| of latents [1, C, T, H, W], over the samples (0 for one latent frame)."""
    return float(torch.stack([x.float().diff(dim=2).abs().mean() for x in samples]).nan_to_num().mean())


def measure(captions: list[str], per_prompt: list[list[torch.Tensor]]) -> dict:
    """Per prompt and on average: diversity across the prompt's seeds and motion."""
    prompts = [
        {"caption": caption, "diversity": diversity(samples), "motion": motion(samples)}
        for caption, samples in zip(captions, per_prompt, strict=True)
    ]
    return {
        "diversity": sum(p["diversity"] for p in prompts) / len(prompts),
        "motion": sum(p["motion"] for p in prompts) / len(prompts),
        "prompts": prompts,
    }


class CollapseGuard:
    """Holds validation's measures against ``fraction`` times the reference's; remembers the last good step."""

    def __init__(self, fraction: float, folder: Path, resumed: bool):
        self.fraction = fraction
        self.path = folder / GUARD_FILE
        # A fresh run in a used OUTPUT_DIR measures its own reference; a resumed one keeps the saved one.
        saved = json.loads(self.path.read_text()) if resumed and self.path.is_file() else {}
        self.reference: dict | None = saved.get("reference")
        self.last_good_step: int | None = saved.get("last_good_step")

    def set_reference(self, reference: dict, is_main: bool) -> None:
        self.reference = {"diversity": reference["diversity"], "motion": reference["motion"]}
        self.save(is_main)

    def save(self, is_main: bool) -> None:
        if is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json({"reference": self.reference, "last_good_step": self.last_good_step}, self.path)

    def problems(self, measures: dict) -> list[str]:
        """What fell below the line, in words (empty: nothing)."""
        found = []
        for name in ("diversity", "motion"):
            value, ref = measures[name], self.reference[name]
            if not value >= self.fraction * ref:  # NaN counts as fallen
                found.append(
                    f"{name} {value:.4g} is {value / ref if ref else float('nan'):.2f}x the reference's {ref:.4g} "
                    f"(the line: --collapse_fraction {self.fraction:g})"
                )
        return found

    def check(self, step: int, passes: dict[str, dict], is_main: bool) -> str | None:
        """The reason to stop after the validation at ``step`` (its passes' measures), or None, recording the
        step as good."""
        found = [f"{name}: {p}" for name, measures in passes.items() for p in self.problems(measures)]
        if not found:
            self.last_good_step = step
            self.save(is_main)
            return None
        good = (
            f"the last step that passed was {self.last_good_step} (a checkpoint at or before it is sound)"
            if self.last_good_step is not None
            else "no validation of this run has passed yet"
        )
        return (
            f"collapse at step {step}: " + "; ".join(found) + f". Stopped without exporting; {good}. "
            "Resume from that checkpoint (--resume_from_checkpoint) with a lower learning rate, or for DMD2 a "
            "higher --critic_learning_rate or --generator_update_interval."
        )
