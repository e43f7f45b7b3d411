"""Model-family registry: ``get_adapter_class("mochi")`` returns the family's adapter class.

Families are registered by name here only; everything downstream asks the registry, so adding
hunyuan, wan or cogvideox is one adapter module plus one line below.
"""

from __future__ import annotations

from fastvideo.models.base import Condition, ModelAdapter, SamplingDefaults, VideoRules

_REGISTRY = {
    "mochi": "fastvideo.models.mochi:MochiAdapter",
    "wan": "fastvideo.models.wan:WanAdapter",
    "hunyuan": "fastvideo.models.hunyuan:HunyuanVideoAdapter",
    "cogvideox": "fastvideo.models.cogvideox:CogVideoXAdapter",
}

MODEL_TYPES = tuple(_REGISTRY)


def get_adapter_class(model_type: str) -> type[ModelAdapter]:
    if model_type not in _REGISTRY:
        raise ValueError(f"unknown model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)}")
    module_name, cls_name = _REGISTRY[model_type].split(":")
    module = __import__(module_name, fromlist=[cls_name])
    return getattr(module, cls_name)


__all__ = ["MODEL_TYPES", "Condition", "ModelAdapter", "SamplingDefaults", "VideoRules", "get_adapter_class"]
