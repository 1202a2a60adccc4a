"""Kronos autoregressive model over (s1, s2) token pairs, with key/value-cached decoding."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError
from .layers import OwnKV, RMSNorm, RotaryTable, RowGroups, TransformerBlock, grouped_attention

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

    def forward(self, query: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None,
                prefix_mask: torch.Tensor | None, own: tuple[torch.Tensor, torch.Tensor],
                own_mask: torch.Tensor | None, groups: RowGroups) -> torch.Tensor:
        """One query per row over its series' prefix context and its own generated context."""
        q = self.heads(self.q_proj(query))
        out = grouped_attention(q, prefix, prefix_mask, own[0], own[1], own_mask, groups)
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

    @property
    def device(self) -> torch.device:
        return self.embedding.emb_s1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.emb_s1.weight.dtype

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

    def extend(self, s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor,
               positions: torch.Tensor, prefix: "SharedPrefix | None", prefix_mask: torch.Tensor | None,
               own: "OwnCache", own_mask: torch.Tensor | None, groups: RowGroups
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Feed tokens [rows, n] at ``positions`` after the shared prefix and each row's own keys.

        Returns the normalised final states [rows, n, d] and every own context key/value so far.
        """
        x = self._inputs(s1, s2, stamps)
        rope = self.rope.at(positions, x)
        for i, block in enumerate(self.transformer):
            x = block.forward_extend(x, rope, prefix.layers[i] if prefix else None, prefix_mask,
                                     own.layers[i], own_mask, groups)
        states = self.norm(x)
        return states, own.context.append(*self.context_keys_values(states))

    def s1_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.head.proj_s1(states)

    def context_keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of final states [rows, length, d]."""
        return self.dep_layer.cross_attn.keys_values(states)

    def s2_logits(self, last_state: torch.Tensor, s1: torch.Tensor, prefix: "SharedPrefix | None",
                  prefix_mask: torch.Tensor | None, own_context: tuple[torch.Tensor, torch.Tensor],
                  own_mask: torch.Tensor | None, groups: RowGroups) -> torch.Tensor:
        """s2 logits [rows, vocab] given the sampled s1 and the context (prefix + own)."""
        sibling = self.embedding.emb_s1(s1)[:, None]
        attn = self.dep_layer.cross_attn(sibling, prefix.context if prefix else None, prefix_mask,
                                         own_context, own_mask, groups)[:, 0]
        return self.head.proj_s2(self.dep_layer.norm(last_state + attn))


def window_masks(prefix_len: torch.Tensor, positions: torch.Tensor, prefix_keys: int,
                 own_slots: torch.Tensor, max_context: int | None,
                 written: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which keys rows fed at ``positions`` [rows, 1] may attend to.

    Returns the shared-prefix mask [rows, prefix_keys] (a series' valid positions) and the
    own-cache mask over ``own_slots`` (own slot j holds position prefix_len + j), broadcastable
    to [rows, heads, 1, slots], or None when every own slot is visible. ``max_context`` (approximate
    sliding) hides keys older than the window; ``written`` [rows, slots] hides slots not written yet.
    """
    keys = torch.arange(prefix_keys, device=prefix_len.device)
    prefix_mask = keys[None] < prefix_len[:, None]
    own_mask = None if written is None else written[:, None, None, :]
    if max_context is not None:
        oldest = positions - max_context + 1  # oldest position still in the window
        prefix_mask = prefix_mask & (keys[None] >= oldest)
        recent = ((prefix_len[:, None] + own_slots[None]) >= oldest)[:, None, None, :]
        own_mask = recent if own_mask is None else own_mask & recent
    return prefix_mask, own_mask


def causal_chunk_mask(start: int, length: int, device: torch.device) -> torch.Tensor:
    """Mask [1, 1, length, start + length]: chunk position i sees cached keys and keys up to itself."""
    keys = torch.arange(start + length, device=device)
    return (keys[None] <= start + torch.arange(length, device=device)[:, None])[None, None]


@dataclass
class SharedPrefix:
    """Keys/values of each series' window, shared by all of its sample paths."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # [series, heads, length, head_dim]
    context: tuple[torch.Tensor, torch.Tensor]       # s2 cross-attention keys/values


@dataclass
class OwnCache:
    """Per-row keys/values of fed tokens for every layer and the s2 context."""

    layers: list[OwnKV]
    context: OwnKV


class KVBuffers:
    """Key/value buffers [n, heads, capacity, head_dim] for every layer and for the s2 context.

    The engine keeps its decode batch and its window recomputations in these; views of them
    serve as a shared prefix (:meth:`prefix`) or as a cache that chunks append to (:meth:`cache`).
    """

    def __init__(self, model: KronosModel, n: int, capacity: int) -> None:
        cfg, device, dtype = model.config, model.device, model.dtype

        def pair(heads: int) -> tuple[torch.Tensor, torch.Tensor]:
            shape = (n, heads, capacity, cfg.d_model // heads)
            return (torch.zeros(shape, device=device, dtype=dtype),
                    torch.zeros(shape, device=device, dtype=dtype))
        self.layers = [pair(cfg.n_heads) for _ in range(cfg.n_layers)]
        self.context = pair(DEPENDENCY_HEADS)
        self.n, self.capacity = n, capacity

    def all(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [*self.layers, self.context]

    def prefix(self, rows: slice, length: int | None = None) -> SharedPrefix:
        """Views of ``rows`` (up to ``length`` positions) as a shared prefix."""
        cut = slice(None, length)
        return SharedPrefix([(k[rows, :, cut], v[rows, :, cut]) for k, v in self.layers],
                            (self.context[0][rows, :, cut], self.context[1][rows, :, cut]))

    def cache(self, rows: slice, length: int = 0, slots: torch.Tensor | None = None,
              length_cap: int | None = None) -> OwnCache:
        """Views of ``rows`` that fed chunks append to (from ``length``), or write at ``slots``
        (views of the first ``length_cap`` positions when given)."""
        cut = slice(None, length_cap)

        def view(pair: tuple[torch.Tensor, torch.Tensor]) -> OwnKV:
            return OwnKV(pair[0][rows, :, cut], pair[1][rows, :, cut], length=length, slots=slots)
        return OwnCache([view(p) for p in self.layers], view(self.context))

    def copy_row(self, source: int, target: int) -> None:
        for k, v in self.all():
            k[target] = k[source]
            v[target] = v[source]

    def grown(self, model: KronosModel, n: int, capacity: int) -> "KVBuffers":
        """New buffers of at least this size holding the current contents."""
        bigger = KVBuffers(model, max(n, self.n), max(capacity, self.capacity))
        for (k, v), (nk, nv) in zip(self.all(), bigger.all()):
            nk[:self.n, :, :self.capacity] = k
            nv[:self.n, :, :self.capacity] = v
        return bigger
