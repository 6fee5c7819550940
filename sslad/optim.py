"""Adam for the short fine-tuning jobs.

``torch.optim.Adam.step`` imports TorchDynamo on first use (~1.4 s here), more than a demo
fine-tuning job spends training; the study runs hundreds of such jobs and never compiles. This is
the update of torch's single-tensor Adam (L2 weight decay added to the gradient), tested against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class Adam:
    """Adam (Kingma & Ba) with L2 weight decay, as ``torch.optim.Adam(foreach=False)``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.state: list[tuple[torch.Tensor, torch.Tensor, list[int]] | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:  # as torch: a parameter without a gradient keeps its state and step count
                continue
            if self.state[i] is None:
                self.state[i] = (torch.zeros_like(p), torch.zeros_like(p), [0])
            m, v, step = self.state[i]
            step[0] += 1
            g = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2 ** step[0])).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** step[0]))
