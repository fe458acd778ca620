"""K probe heads trained side by side on the same minibatches, each with its own learning rate and weight
decay. Two interchangeable banks with one interface (train/eval, step, logits, state_dicts):

- LoopHeads: K nn.Modules, each with its own torch.optim.AdamW; the minibatch is read once and fed to each
  head in turn. Works for every probe (BatchNorm included) and is the reference a single head uses.
- StackedHeads: one probe's parameters stacked K times ([K, ...]) and run as one batched computation with
  torch.func (vmap over functional_call), updated by StackedAdamW, AdamW over the stacked tensors with a
  per-head lr and weight decay. Probes without buffers only (no BatchNorm).

Both give every head what a single head with the same seed, lr and wd computes, up to float rounding.
Weight decay applies to weight matrices only (ndim >= 2), never to the learned query.

Shape legend: K heads, B batch, N tokens, D width, C classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

__all__ = ["LoopHeads", "StackedAdamW", "StackedHeads", "cosine_lr", "decays"]

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which the single-head probe uses


@contextmanager
def _quiet_vmap() -> Iterator[None]:
    # PyTorch warns that SDPA has no vmap batching rule on CPU (it loops over the heads there); expected.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        yield


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to this parameter: weight matrices, not biases, norms or the query."""
    return param.ndim >= 2 and name != "query"


def cosine_lr(lr: float, step: int, total: int) -> float:
    """The per-step cosine schedule from lr at step 0 towards 0 at `total`."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / total))


class LoopHeads:
    def __init__(self, models: Sequence[nn.Module], lrs: Sequence[float], wds: Sequence[float]) -> None:
        self.models, self.lrs = list(models), list(lrs)
        self.opts = []
        for model, wd in zip(self.models, wds):
            named = list(model.named_parameters())
            groups = [
                {"params": [p for n, p in named if decays(n, p)], "weight_decay": wd},
                {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
            ]
            self.opts.append(torch.optim.AdamW(groups, lr=self.lrs[-1]))

    def train(self, mode: bool = True) -> None:
        for model in self.models:
            model.train(mode)

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int, total: int) -> list[float]:
        """One AdamW step of every head on x [B, N, D], y [B]; -> the K losses."""
        losses = []
        for model, opt, lr in zip(self.models, self.opts, self.lrs):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(lr, step, total)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(x).float() for model in self.models])  # [K, B, C]

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.models]


class StackedAdamW:
    """AdamW (as torch.optim.AdamW's single-tensor path computes it) over parameters stacked [K, ...], with
    learning rates and weight decays per head."""

    def __init__(self, params: dict[str, torch.Tensor], lrs: Sequence[float], wds: Sequence[float]) -> None:
        self.params, self.lrs = params, list(lrs)
        self.wds = {n: list(wds) if decays(n, p[0]) else [0.0] * len(self.lrs) for n, p in params.items()}
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.t = 0

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], step: int, total: int) -> None:
        self.t += 1
        b1, b2 = BETAS
        bc1, bc2_sqrt = 1 - b1**self.t, (1 - b2**self.t) ** 0.5
        lrs = [cosine_lr(lr, step, total) for lr in self.lrs]
        for name, p in self.params.items():
            g, m, v = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            shape = (len(lrs),) + (1,) * (p.ndim - 1)  # per-head scalars broadcast over [K, ...]
            keep = torch.tensor([1 - lr * wd for lr, wd in zip(lrs, self.wds[name])], dtype=p.dtype)
            p.mul_(keep.to(p.device).view(shape))
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(EPS)
            step_size = torch.tensor([-lr / bc1 for lr in lrs], dtype=p.dtype, device=p.device)
            p.add_(m / denom * step_size.view(shape))


class StackedHeads:
    """K copies of `model` (same initial weights) as stacked parameters, trained in one vmapped pass."""

    def __init__(self, model: nn.Module, lrs: Sequence[float], wds: Sequence[float]) -> None:
        if any(True for _ in model.buffers()):
            raise ValueError(f"stacked heads: {type(model).__name__} has buffers (BatchNorm); use LoopHeads")
        k = len(lrs)
        self.model = model
        self.params = {
            n: p.detach().unsqueeze(0).repeat(k, *([1] * p.ndim)) for n, p in model.named_parameters()
        }  # name -> [K, ...]
        self.opt = StackedAdamW(self.params, lrs, wds)

        def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.model, params, (x,)), y)

        def logits(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, params, (x,))

        self._grads = vmap(grad_and_value(loss), in_dims=(0, None, None))  # -> ({name: [K, ...]}, [K])
        self._logits = vmap(logits, in_dims=(0, None))  # -> [K, B, C]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int, total: int) -> list[float]:
        with _quiet_vmap():
            grads, losses = self._grads(self.params, x, y)
        self.opt.step(grads, step, total)
        return losses.tolist()

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with _quiet_vmap():
            return self._logits(self.params, x).float()  # [K, B, C]

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        k = len(self.opt.lrs)
        return [{n: p[i].detach().cpu() for n, p in self.params.items()} for i in range(k)]
