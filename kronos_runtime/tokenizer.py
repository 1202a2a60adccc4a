"""Kronos tokenizer: a causal transformer autoencoder with a binary spherical quantizer.

Encoding maps each normalised OHLCV row to two token ids (s1: coarse bits, s2: fine bits);
decoding maps token ids back to normalised rows.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TokenizerConfig
from .layers import RotaryTable, TransformerBlock


def ids_to_bits(ids: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Little-endian bits of ``ids`` as booleans, shape [..., n_bits]."""
    weights = 2 ** torch.arange(n_bits, device=ids.device, dtype=torch.long)
    return (ids.unsqueeze(-1) & weights) != 0


def bits_to_ids(bits: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`ids_to_bits`."""
    weights = 2 ** torch.arange(bits.shape[-1], device=bits.device, dtype=torch.long)
    return (bits.long() * weights).sum(-1)


class KronosTokenizer(nn.Module):
    """Encoder/decoder between normalised candles and (s1, s2) token ids."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        d, heads, ff = config.d_model, config.n_heads, config.ff_dim
        self.codebook_dim = config.s1_bits + config.s2_bits
        self.embed = nn.Linear(config.d_in, d)
        self.encoder = nn.ModuleList(
            TransformerBlock(d, heads, ff) for _ in range(config.n_enc_layers - 1))
        self.quant_embed = nn.Linear(d, self.codebook_dim)
        self.post_quant_embed = nn.Linear(self.codebook_dim, d)
        self.decoder = nn.ModuleList(
            TransformerBlock(d, heads, ff) for _ in range(config.n_dec_layers - 1))
        self.head = nn.Linear(d, config.d_in)
        self.rope = RotaryTable(d // heads)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[0].norm1.weight.dtype if len(self.decoder) else torch.float32

    def _run(self, blocks: nn.ModuleList, z: torch.Tensor) -> torch.Tensor:
        rope = self.rope.span(z.shape[1], z)
        for block in blocks:
            z, _, _ = block.forward_full(z, rope)
        return z

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (s1, s2), each [batch, length], for normalised rows [batch, length, d_in]."""
        z = self.quant_embed(self._run(self.encoder, self.embed(x)))
        # The quantizer L2-normalises then takes the sign: the sign alone decides each bit.
        bits = z > 0
        s1_bits = self.config.s1_bits
        return bits_to_ids(bits[..., :s1_bits]), bits_to_ids(bits[..., s1_bits:])

    def decode(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """Normalised rows [batch, length, d_in] for token ids [batch, length]."""
        bits = torch.cat([ids_to_bits(s1, self.config.s1_bits),
                          ids_to_bits(s2, self.config.s2_bits)], dim=-1)
        codes = (bits.to(self.dtype) * 2 - 1) * (1.0 / math.sqrt(self.codebook_dim))
        return self.head(self._run(self.decoder, self.post_quant_embed(codes)))
