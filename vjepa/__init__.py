"""vjepa: a training system for V-JEPA video world models.

The model builders are imported on first use, so that `import vjepa` (and `vjepa --help`) does not load
PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vjepa.models import build_encoder, build_predictor
    from vjepa.pretrained import load_encoder, load_predictor

__all__ = ["build_encoder", "build_predictor", "load_encoder", "load_predictor"]
__version__ = "0.1.0"
_HOMES = {"build_encoder": "vjepa.models", "build_predictor": "vjepa.models"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module(_HOMES.get(name, "vjepa.pretrained")), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vjepa' has no attribute {name!r}")
