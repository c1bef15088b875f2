"""Exponential moving average of the trainable parameters (Flow-GRPO: decay 0.9 every 8 steps).

State is a flat dict of tensors so that it is saved as safetensors.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List

import torch


class EMA:
    def __init__(self, params: List[torch.nn.Parameter], decay: float, every: int = 1):
        self.params = list(params)
        self.decay, self.every = decay, max(int(every), 1)
        self.shadow = [p.detach().clone().float() for p in self.params]
        self.num_updates = 0

    @torch.no_grad()
    def step(self, optimizer_step: int) -> None:
        if optimizer_step % self.every:
            return
        self.num_updates += 1
        for s, p in zip(self.shadow, self.params):
            s.mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)

    @contextlib.contextmanager
    def swapped(self):
        """Temporarily load the EMA weights into the model (for evaluation)."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        sd = {f"shadow.{i}": s.contiguous() for i, s in enumerate(self.shadow)}
        sd["num_updates"] = torch.tensor(self.num_updates)
        return sd

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        for i, s in enumerate(self.shadow):
            s.copy_(sd[f"shadow.{i}"])
        self.num_updates = int(sd["num_updates"])
