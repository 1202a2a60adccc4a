"""Token sampling: temperature, top-k or top-p (nucleus), with one generator per series."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError


MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 1e6  # logits / T stays finite in float32
MAX_TOP_K = 2 ** 31 - 1  # anything past the vocabulary already means "no filter"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one series. ``top_k > 0`` wins over ``top_p`` (as in the reference)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    sample_count: int = 1
    seed: int | None = None

    def validate(self) -> None:
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise InputError("temperature", f"must be in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise InputError("top_k", f"must be in [0, {MAX_TOP_K}] (0: no top-k filter)")
        if not 0 < self.top_p <= 1:
            raise InputError("top_p", "must be in (0, 1]")
        if self.sample_count < 1:
            raise InputError("sample_count", "must be >= 1")
        if self.seed is not None and not 0 <= self.seed < 2 ** 63:
            raise InputError("seed", "must be an integer in [0, 2**63)")

    @property
    def greedy(self) -> bool:
        return self.top_k == 1


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask logits [rows, vocab] outside each row's top-k (k > 0) or top-p nucleus (k == 0)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    vocab = logits.shape[-1]
    kth = sorted_logits.gather(-1, (top_k.clamp(1, vocab) - 1)[:, None])
    remove_k = (logits < kth) & (top_k > 0)[:, None]
    cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    beyond = cumulative > top_p[:, None]
    beyond = torch.cat([torch.zeros_like(beyond[:, :1]), beyond[:, :-1]], dim=-1)
    remove_p = torch.zeros_like(beyond).scatter(-1, order, beyond)
    remove_p &= ((top_k == 0) & (top_p < 1.0))[:, None]
    return logits.masked_fill(remove_k | remove_p, float("-inf"))
