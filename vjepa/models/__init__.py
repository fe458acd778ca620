"""Encoder, predictor, size registry and builders."""

from vjepa.models.builder import build_encoder, build_predictor
from vjepa.models.registry import MODEL_SIZES

__all__ = ["MODEL_SIZES", "build_encoder", "build_predictor"]
