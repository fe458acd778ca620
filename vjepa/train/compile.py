"""`model.compile=true`: torch.compile of the context encoder, the predictor and the EMA target.

Compiled in place (`nn.Module.compile`), so parameter names, checkpoints, the EMA update and the DDP wrapper
see the same modules. Shapes are dynamic: the packed context and target sets change length every batch, and
the variable-length attention (vjepa/layers/varlen.py) runs outside the graphs, so a new batch reuses the
compiled graphs instead of recompiling.
"""

from __future__ import annotations

from torch import nn

from vjepa.distributed.engine import Engine


def compiled_modules(engine: Engine) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(encoder, predictor, target) of an engine, as `compile_models` compiles them."""
    return engine.module.encoder, engine.module.predictor, engine.target.module


def compile_models(engine: Engine, backend: str) -> None:
    """torch.compile (backend `model.compile_backend`) of the engine's encoder, predictor and target."""
    for module in compiled_modules(engine):
        module.compile(dynamic=True, backend=backend)
