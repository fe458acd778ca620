"""vjepa: a training system for V-JEPA video world models."""

from vjepa.models import build_encoder, build_predictor

__all__ = ["build_encoder", "build_predictor"]
__version__ = "0.1.0"
