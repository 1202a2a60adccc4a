"""Transformer building blocks shared by the Kronos tokenizer and model.

Parameter names follow the public checkpoints so their state dicts load unchanged.
Every attention layer can run over a whole sequence (causal, returning its keys and
values for a cache) or over one new position per row against a key/value cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROPE_BASE = 10000.0


def can_pack(weight: torch.Tensor) -> bool:
    """oneDNN pre-packed weights pay off for float32 on the CPU (about 1.7x per matmul here)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class PackedLinear(nn.Module):
    """y = x W^T + b with W pre-packed for oneDNN once, instead of re-packed at every call."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features = weight.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)
        self.bias = None if bias is None else bias.detach().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def linear_fn(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    """A module computing x W^T + b, pre-packed where that is faster."""
    if can_pack(weight):
        return PackedLinear(weight, bias)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                      device=weight.device, dtype=weight.dtype)
    layer.weight.data = weight
    if bias is not None:
        layer.bias.data = bias
    return layer.requires_grad_(False)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as in the reference."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return x32.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU feed-forward without bias: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, ff_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)

        self.w13: nn.Module | None = None

    def fuse(self) -> None:
        """Stack w1 and w3 into one matrix (one read of the weights per step)."""
        self.w13 = linear_fn(torch.cat([self.w1.weight, self.w3.weight]))
        del self.w1, self.w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class RotaryTable:
    """Cos/sin tables of rotate-half rotary embeddings.

    :meth:`span` serves whole windows from position 0. :meth:`at` gathers rows for arbitrary
    positions from tables kept on the device by :meth:`reserve` (on every device, so the CPU
    runs the same code as a GPU): no host round trip per step and nothing a CUDA graph cannot
    capture. Tables only grow, by doubling, so they rarely move.
    """

    def __init__(self, head_dim: int) -> None:
        self.inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self._cos = torch.empty(0, head_dim)
        self._sin = torch.empty(0, head_dim)
        self._on_device: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _grow(self, length: int) -> None:
        positions = torch.arange(length, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        self._cos, self._sin = angles.cos(), angles.sin()

    def _ensure(self, length: int) -> None:
        if self._cos.shape[0] < length:
            self._grow(max(length, 2 * self._cos.shape[0]))

    def reserve(self, length: int, device: torch.device, dtype: torch.dtype) -> None:
        """Keep tables for at least positions 0..length-1 on ``device`` (used by :meth:`at`)."""
        key = (torch.device(device), dtype)
        held = self._on_device[key][0].shape[0] if key in self._on_device else 0
        if held < length:
            self._ensure(max(length, 2 * held))
            self._on_device[key] = (self._cos.to(device, dtype), self._sin.to(device, dtype))

    def reserved(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The device tables (cos, sin) that :meth:`at` gathers from."""
        tables = self._on_device.get((torch.device(device), dtype))
        if tables is None:
            raise RuntimeError("RotaryTable.reserve() must be called for this device first")
        return tables

    def span(self, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for positions 0..length-1, shaped [1, 1, length, head_dim]."""
        self._ensure(length)
        cos = self._cos[:length].to(like.device, like.dtype)
        sin = self._sin[:length].to(like.device, like.dtype)
        return cos[None, None], sin[None, None]

    def at(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for positions [rows, n], shaped [rows, 1, n, head_dim].

        Positions must be below the length given to :meth:`reserve` for this device and dtype.
        """
        cos, sin = self.reserved(positions.device, like.dtype)
        return cos[positions][:, None], sin[positions][:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply the rotate-half rotary embedding."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with rotary positions and biased projections."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.qkv: nn.Module | None = None

    def fuse(self) -> None:
        """Stack the q/k/v projections into one matrix (one read of the weights per step)."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        self.qkv = linear_fn(torch.cat([p.weight for p in projections]),
                             torch.cat([p.bias for p in projections]))
        del self.q_proj, self.k_proj, self.v_proj

    def _project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries and keys, and values, each [rows, heads, length, head_dim]."""
        if self.qkv is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        cos, sin = rope
        return rotate(self._heads(q), cos, sin), rotate(self._heads(k), cos, sin), self._heads(v)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        rows, length, _ = x.shape
        return x.reshape(rows, length, self.n_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        rows, _, length, _ = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(rows, length, -1))

    def forward_full(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal attention over the whole sequence; returns output, keys, values."""
        q, k, v = self._project(x, rope)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self._merge(out), k, v

    def forward_extend(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                       prefix: tuple[torch.Tensor, torch.Tensor] | None, prefix_mask: torch.Tensor | None,
                       own: "OwnKV", own_mask: torch.Tensor, groups: "RowGroups") -> torch.Tensor:
        """New positions of each row, attending to its series' shared prefix and its own keys."""
        q, k, v = self._project(x, rope)
        own_k, own_v = own.append(k, v)
        out = grouped_attention(q, prefix, prefix_mask, own_k, own_v, own_mask, groups)
        return self._merge(out)


class OwnKV:
    """One layer's per-row keys/values after the shared prefix: a growing cache or one chunk.

    With ``slots`` set (a device tensor [rows]: the slot each row writes next) the cache has a
    fixed shape: each row's new key is written at its own slot and the whole buffer is returned
    (masks hide slots not written yet). That is how the engine's decode batch, whose rows are at
    different steps, feeds one position per row.
    """

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None,
                 length: int = 0, slots: torch.Tensor | None = None) -> None:
        self.keys, self.values, self.length, self.slots = keys, values, length, slots

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add new keys/values [rows, heads, n, dim]; returns all keys/values so far."""
        if self.keys is None:  # a chunk with no cache behind it
            return k, v
        if self.slots is not None:
            rows = torch.arange(self.keys.shape[0], device=self.keys.device)
            self.keys[rows, :, self.slots] = k[:, :, 0]
            self.values[rows, :, self.slots] = v[:, :, 0]
            return self.keys, self.values
        end = self.length + k.shape[2]
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class RowGroups:
    """Rows (sample paths) grouped by series: row r is slot ``slot[r]`` of series ``series[r]``.

    Attention to a shared prefix runs per series over a [series, slots] layout, so the
    prefix keys/values are read once per series, not once per path.
    """

    def __init__(self, row_series: list[int], device: torch.device) -> None:
        slots: dict[int, int] = {}
        row_slot = []
        for b in row_series:
            row_slot.append(slots.get(b, 0))
            slots[b] = row_slot[-1] + 1
        self.n_series = max(row_series) + 1 if row_series else 0
        self.slots = max(slots.values()) if slots else 1
        self.series = torch.tensor(row_series, dtype=torch.long, device=device)
        self.slot = torch.tensor(row_slot, dtype=torch.long, device=device)
        self.identity = self.slots == 1 and row_series == list(range(len(row_series)))

    @classmethod
    def fixed(cls, series: torch.Tensor, slot: torch.Tensor, n_series: int, slots: int) -> "RowGroups":
        """A layout of fixed shape [n_series, slots] whose row placement lives in the device
        tensors ``series`` and ``slot`` (refilled in place between CUDA graph replays); every
        row must have its own cell."""
        groups = cls.__new__(cls)
        groups.series, groups.slot = series, slot
        groups.n_series, groups.slots, groups.identity = n_series, slots, False
        return groups

    def to_groups(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, ...] -> [series, slots, ...] (empty slots are zero)."""
        if self.identity:
            return x[:, None]
        out = x.new_zeros((self.n_series, self.slots) + tuple(x.shape[1:]))
        out[self.series, self.slot] = x
        return out

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """[series, slots, ...] -> [rows, ...]."""
        return x[:, 0] if self.identity else x[self.series, self.slot]


def grouped_attention(q: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None,
                      prefix_mask: torch.Tensor | None, own_k: torch.Tensor, own_v: torch.Tensor,
                      own_mask: torch.Tensor | None, groups: RowGroups) -> torch.Tensor:
    """Softmax attention of queries [rows, h, n, d] over a per-series prefix and per-row keys.

    ``prefix`` keys/values are [series, h, L, d] with ``prefix_mask`` [rows, L]; own keys are
    [rows, h, m, d] with ``own_mask`` broadcastable to [rows, h, n, m].
    """
    rows, heads, n, dim = q.shape
    scale = dim ** -0.5
    own_scores = torch.matmul(q, own_k.transpose(-1, -2)) * scale
    if own_mask is not None:
        own_scores = own_scores.masked_fill(~own_mask, float("-inf"))
    if prefix is None or prefix[0].shape[2] == 0:
        return torch.matmul(torch.softmax(own_scores, dim=-1), own_v)
    keys, values = prefix
    length = keys.shape[2]
    grouped_q = groups.to_groups(q).permute(0, 2, 1, 3, 4).reshape(groups.n_series, heads, -1, dim)
    prefix_scores = torch.matmul(grouped_q, keys.transpose(-1, -2)) * scale
    prefix_scores = groups.to_rows(
        prefix_scores.reshape(groups.n_series, heads, groups.slots, n, length).permute(0, 2, 1, 3, 4))
    if prefix_mask is not None:
        prefix_scores = prefix_scores.masked_fill(~prefix_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(torch.cat([prefix_scores, own_scores], dim=-1), dim=-1)
    prefix_probs, own_probs = probs.split([length, probs.shape[-1] - length], dim=-1)
    grouped_p = groups.to_groups(prefix_probs).permute(0, 2, 1, 3, 4).reshape(
        groups.n_series, heads, -1, length)
    prefix_out = torch.matmul(grouped_p, values).reshape(groups.n_series, heads, groups.slots, n, dim)
    prefix_out = groups.to_rows(prefix_out.permute(0, 2, 1, 3, 4))
    return prefix_out + torch.matmul(own_probs, own_v)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1 x), then + ffn(norm2 x)."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = SelfAttention(d_model, n_heads)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim)

    def forward_full(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn, k, v = self.self_attn.forward_full(self.norm1(x), rope)
        x = x + attn
        return x + self.ffn(self.norm2(x)), k, v

    def forward_extend(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                       prefix: tuple[torch.Tensor, torch.Tensor] | None, prefix_mask: torch.Tensor | None,
                       own: OwnKV, own_mask: torch.Tensor, groups: RowGroups) -> torch.Tensor:
        x = x + self.self_attn.forward_extend(self.norm1(x), rope, prefix, prefix_mask, own,
                                              own_mask, groups)
        return x + self.ffn(self.norm2(x))


def optimize_for_inference(module: nn.Module) -> None:
    """Fuse attention and feed-forward projections, then pre-pack every linear layer.

    Done once after loading; the module keeps one copy of its weights (fused and packed).
    """
    for layer in list(module.modules()):
        if isinstance(layer, (SelfAttention, FeedForward)):
            layer.fuse()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and can_pack(child.weight):
                setattr(parent, name, PackedLinear(child.weight, child.bias))
