"""Speed options of the training step: `model.compile=true` (torch.compile of encoder, target and predictor,
on CPU), fused AdamW on CUDA only, and bf16 autocast on CPU (`train.precision=bf16`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny import TINY_RUN

from data_pipelines import MaskGenerator, build_train_stream
from vjepa.config import load_config
from vjepa.distributed.env import DistEnv
from vjepa.models.builder import token_grid
from vjepa.train.compile import compiled_modules
from vjepa.train.optim import build_optimizer, fused_adamw
from vjepa.train.trainer import build_models, make_engine, train_step

CPU = torch.device("cpu")


def _engine(*extra: str):
    cfg = load_config(None, [*TINY_RUN, "optim.warmup_steps=0", "train.steps=4", *extra])
    torch.manual_seed(0)
    return cfg, make_engine(cfg, build_models(cfg, CPU), CPU, DistEnv())


def _batches(cfg, n: int) -> list:
    grid = token_grid(frames=4, crop=32, patch=16, tubelet=2)
    masks = MaskGenerator(cfg.mask, grid=grid, seed=0, rank=0)
    stream = iter(build_train_stream(cfg.data, mask_generator=masks, seed=0))
    return [next(stream) for _ in range(n)]


def _steps(cfg, engine, batches) -> list[float]:
    return [train_step(engine, b, step, cfg, CPU).loss for step, b in enumerate(batches)]


# ----------------------------------------------------------------------------- torch.compile


def _compiled_step_matches_eager(backend: str, steps: int, atol: float) -> None:
    from torch._dynamo.utils import counters

    cfg, eager = _engine()
    ccfg, compiled = _engine("model.compile=true", f"model.compile_backend={backend}")
    assert all(m._compiled_call_impl is not None for m in compiled_modules(compiled))
    assert all(m._compiled_call_impl is None for m in compiled_modules(eager))
    batches = _batches(cfg, steps)
    lengths = {tuple(int(n) for n in b.masks[0].context_valid.sum(1)) for b in batches}
    want = _steps(cfg, eager, batches)
    got = [train_step(compiled, batches[0], 0, ccfg, CPU).loss]
    graphs = counters["stats"]["unique_graphs"]
    got += [train_step(compiled, b, step, ccfg, CPU).loss for step, b in enumerate(batches[1:], start=1)]
    assert got == pytest.approx(want, abs=atol)
    assert len(lengths) > 1  # the batches' context lengths differ...
    assert counters["stats"]["unique_graphs"] == graphs  # ...and reuse the graphs (no recompilation)
    for a, b in zip(compiled.module.state_dict().items(), eager.module.state_dict().items()):
        assert a[0] == b[0]  # compiled in place: the checkpoint's names are unchanged
        torch.testing.assert_close(a[1], b[1], atol=atol, rtol=1e-4)


def test_compiled_step_matches_eager_with_dynamo() -> None:
    # The Dynamo tracing of our modules (graph breaks, guards, dynamic shapes) without the slow inductor
    # code generation on a 2-core CI machine; the inductor run is the slow test below.
    _compiled_step_matches_eager("eager", steps=3, atol=1e-6)


@pytest.mark.slow
def test_compiled_step_matches_eager_with_inductor() -> None:
    _compiled_step_matches_eager("inductor", steps=2, atol=1e-4)


def test_compile_with_deepspeed_is_refused() -> None:
    with pytest.raises(ValueError, match="model.compile"):
        load_config(None, [*TINY_RUN, "model.compile=true", "dist.backend=deepspeed"])
    with pytest.raises(ValueError, match="model.compile_backend"):
        load_config(None, [*TINY_RUN, "model.compile=true", "model.compile_backend=tvm"])


# ----------------------------------------------------------------------------- fused AdamW


def test_fused_adamw_where_every_parameter_has_a_fused_kernel() -> None:
    on = [SimpleNamespace(device=torch.device(d)) for d in ("cuda", "cuda:1", "cpu")]
    assert fused_adamw(on)
    assert not fused_adamw([*on, SimpleNamespace(device=torch.device("mps"))]) and not fused_adamw([])
    cfg, engine = _engine()
    assert engine.optimizer.defaults["fused"] is True  # CPU: torch's fused kernel
    assert build_optimizer(engine.module, cfg.optim).defaults["lr"] == cfg.optim.start_lr


def test_fused_adamw_steps_like_the_per_parameter_loop() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(7, 5, requires_grad=True), torch.randn(5, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_(True) for w in weights]
    opts = [
        torch.optim.AdamW(ws, lr=1e-2, weight_decay=0.1, fused=f)
        for ws, f in ((weights, True), (copies, None))
    ]
    for _ in range(3):
        grads = [torch.randn_like(w) for w in weights]
        for ws, opt in zip((weights, copies), opts):
            for w, g in zip(ws, grads):
                w.grad = g.clone()
            opt.step()
    for a, b in zip(weights, copies):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_adamw_on_cuda() -> None:
    cfg = load_config(None, [*TINY_RUN, "train.device=cuda"])
    engine = make_engine(cfg, build_models(cfg, torch.device("cuda")), torch.device("cuda"), DistEnv())
    assert engine.optimizer.defaults["fused"] is True


# ----------------------------------------------------------------------------- bf16 on CPU


def test_bf16_autocast_on_cpu() -> None:
    cfg, fp32 = _engine()
    bcfg, bf16 = _engine("train.precision=bf16")
    dtypes = []
    bf16.module.predictor.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    batch = _batches(cfg, 1)[0]
    want = train_step(fp32, batch, 0, cfg, CPU)
    got = train_step(bf16, batch, 0, bcfg, CPU)
    assert dtypes == [torch.bfloat16]  # the predictor ran its matmuls in bf16
    assert got.applied and got.loss == pytest.approx(want.loss, rel=2e-2)
    assert all(p.dtype == torch.float32 for p in bf16.module.parameters())  # fp32 weights
