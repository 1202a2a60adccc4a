"""Kronos autoregressive model over (s1, s2) token pairs, with key/value-cached decoding."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError
from .layers import RMSNorm, RotaryTable, TransformerBlock

DEPENDENCY_HEADS = 4  # the s2 cross-attention always has 4 heads
TIME_TABLES = (("minute_embed", 60), ("hour_embed", 24), ("weekday_embed", 7),
               ("day_embed", 32), ("month_embed", 13))


class HierarchicalEmbedding(nn.Module):
    """Fuses the s1 and s2 token embeddings into one vector."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.scale = math.sqrt(d)
        self.emb_s1 = nn.Embedding(2 ** config.s1_bits, d)
        self.emb_s2 = nn.Embedding(2 ** config.s2_bits, d)
        self.fusion_proj = nn.Linear(2 * d, d)

    def forward(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        return self.fusion_proj(torch.cat([self.emb_s1(s1) * self.scale,
                                           self.emb_s2(s2) * self.scale], dim=-1))


class TemporalEmbedding(nn.Module):
    """Sum of learned minute, hour, weekday, day and month tables."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        for name, size in TIME_TABLES:
            setattr(self, name, nn.Embedding(size, d_model))

    def forward(self, stamps: torch.Tensor) -> torch.Tensor:
        """``stamps`` [..., 5] holds minute, hour, weekday, day, month."""
        s = stamps.long()
        minute = self.minute_embed(s[..., 0])
        return (self.hour_embed(s[..., 1]) + self.weekday_embed(s[..., 2])
                + self.day_embed(s[..., 3]) + self.month_embed(s[..., 4]) + minute)


class CrossAttention(nn.Module):
    """Single-query attention of the sampled s1 over the context (no mask, no rotation)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.head_dim = d_model // DEPENDENCY_HEADS
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        rows, length, _ = x.shape
        return x.view(rows, length, DEPENDENCY_HEADS, self.head_dim).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [rows, 4, length, head_dim] of context states [rows, length, d]."""
        return self.heads(self.k_proj(context)), self.heads(self.v_proj(context))

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        q = self.heads(self.q_proj(query))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        rows = query.shape[0]
        return self.out_proj(out.transpose(1, 2).reshape(rows, 1, -1))


class DependencyLayer(nn.Module):
    """s2 conditioning: RMSNorm(context + cross_attn(s1 embedding, context))."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.cross_attn = CrossAttention(d_model)
        self.norm = RMSNorm(d_model)


class DualHead(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.proj_s1 = nn.Linear(config.d_model, 2 ** config.s1_bits)
        self.proj_s2 = nn.Linear(config.d_model, 2 ** config.s2_bits)


class KronosModel(nn.Module):
    """The Kronos decoder-only transformer, split into prefill and cached single steps."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.learn_te:
            raise CheckpointError("only checkpoints with learn_te=true are supported")
        self.config = config
        d = config.d_model
        self.embedding = HierarchicalEmbedding(config)
        self.time_emb = TemporalEmbedding(d)
        self.transformer = nn.ModuleList(
            TransformerBlock(d, config.n_heads, config.ff_dim) for _ in range(config.n_layers))
        self.norm = RMSNorm(d)
        self.dep_layer = DependencyLayer(d)
        self.head = DualHead(config)
        self.rope = RotaryTable(d // config.n_heads)

    def _inputs(self, s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor) -> torch.Tensor:
        return self.embedding(s1, s2) + self.time_emb(stamps)

    def prefill(self, s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run whole windows [rows, length] from position 0.

        Returns the normalised final states [rows, length, d] and each layer's keys/values.
        Rows may be right-padded: attention is causal, so padding never reaches real positions.
        """
        x = self._inputs(s1, s2, stamps)
        rope = self.rope.span(x.shape[1], x)
        kv = []
        for block in self.transformer:
            x, k, v = block.forward_full(x, rope)
            kv.append((k, v))
        return self.norm(x), kv

    def step(self, s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor,
             positions: torch.Tensor, cache: "KVCache", mask: torch.Tensor) -> torch.Tensor:
        """Feed one token per row at cache index ``positions``; returns final states [rows, d]."""
        x = self._inputs(s1[:, None], s2[:, None], stamps[:, None])
        rope = self.rope.at(positions, x)
        for block, (ck, cv) in zip(self.transformer, cache.layers):
            x = block.forward_step(x, rope, ck, cv, positions, mask)
        return self.norm(x)[:, 0]

    def s1_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.head.proj_s1(states)

    def context_keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of final states [rows, length, d]."""
        return self.dep_layer.cross_attn.keys_values(states)

    def s2_logits(self, last_state: torch.Tensor, s1: torch.Tensor, keys: torch.Tensor,
                  values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """s2 logits [rows, vocab] given the sampled s1 and the context keys/values."""
        sibling = self.embedding.emb_s1(s1)[:, None]
        attn = self.dep_layer.cross_attn(sibling, keys, values, mask)[:, 0]
        return self.head.proj_s2(self.dep_layer.norm(last_state + attn))


class KVCache:
    """Pre-allocated keys/values for every layer plus the s2 context keys/values."""

    def __init__(self, model: KronosModel, rows: int, capacity: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        cfg = model.config
        head_dim = cfg.d_model // cfg.n_heads
        shape = (rows, cfg.n_heads, capacity, head_dim)
        self.layers = [(torch.zeros(shape, device=device, dtype=dtype),
                        torch.zeros(shape, device=device, dtype=dtype))
                       for _ in range(cfg.n_layers)]
        ctx_shape = (rows, DEPENDENCY_HEADS, capacity, cfg.d_model // DEPENDENCY_HEADS)
        self.context = (torch.zeros(ctx_shape, device=device, dtype=dtype),
                        torch.zeros(ctx_shape, device=device, dtype=dtype))

    def fill(self, kv: list[tuple[torch.Tensor, torch.Tensor]],
             context_kv: tuple[torch.Tensor, torch.Tensor], source_rows: torch.Tensor) -> None:
        """Copy prefill results into every row; row i takes prefill row ``source_rows[i]``."""
        length = kv[0][0].shape[2]
        for (ck, cv), (k, v) in zip(self.layers, kv):
            ck[:, :, :length] = k.index_select(0, source_rows)
            cv[:, :, :length] = v.index_select(0, source_rows)
        for cache, fresh in zip(self.context, context_kv):
            cache[:, :, :length] = fresh.index_select(0, source_rows)

    def write_context(self, states: torch.Tensor, model: KronosModel, positions: torch.Tensor) -> None:
        """Append the cross-attention keys/values of new final states [rows, d]."""
        k, v = model.context_keys_values(states[:, None])
        rows = torch.arange(states.shape[0], device=states.device)
        self.context[0][rows, :, positions] = k[:, :, 0]
        self.context[1][rows, :, positions] = v[:, :, 0]

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row not in ``rows`` (finished series)."""
        self.layers = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.layers]
        self.context = tuple(t.index_select(0, rows) for t in self.context)
