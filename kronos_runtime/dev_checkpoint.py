"""Random-weight checkpoints in the public Hugging Face layout, for tests and offline demos.

They have the real shapes and the real file format (config.json + model.safetensors, with the
same extra keys the released files carry), so anything that loads them loads the real ones.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig, TokenizerConfig
from .layers import RotaryTable
from .model import KronosModel
from .tokenizer import KronosTokenizer

MODEL_SHAPES = {
    "tiny": dict(d_model=32, n_layers=2, n_heads=2, ff_dim=64),
    "mini": dict(d_model=256, n_layers=4, n_heads=4, ff_dim=512),
    "small": dict(d_model=512, n_layers=8, n_heads=8, ff_dim=1024),
    "base": dict(d_model=832, n_layers=12, n_heads=16, ff_dim=2048),
}
TOKENIZER_SHAPES = {
    "tiny": dict(d_model=32, n_heads=2, ff_dim=64, n_enc_layers=2, n_dec_layers=2, group_size=4),
    "mini": dict(d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4, group_size=5),
    "small": dict(d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4, group_size=4),
    "base": dict(d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4, group_size=4),
}
MAX_CONTEXT = {"tiny": 512, "mini": 2048, "small": 512, "base": 512}
DROPOUTS = dict(ffn_dropout_p=0.1, attn_dropout_p=0.0, resid_dropout_p=0.1)


def model_config(shape: str) -> ModelConfig:
    return ModelConfig(s1_bits=10, s2_bits=10, token_dropout_p=0.1, learn_te=True,
                       **DROPOUTS, **MODEL_SHAPES[shape])


def tokenizer_config(shape: str) -> TokenizerConfig:
    return TokenizerConfig(d_in=6, s1_bits=10, s2_bits=10, beta=0.05, gamma0=1.0, gamma=1.1,
                           zeta=0.05, **DROPOUTS, **TOKENIZER_SHAPES[shape])


def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Realistic random weights: xavier-normal matrices, small biases, scaled embeddings."""
    for name, param in module.named_parameters():
        if param.dim() == 2 and "emb" in name.split(".")[-2]:
            std = param.shape[1] ** -0.5
        elif param.dim() == 2:
            std = (2.0 / sum(param.shape)) ** 0.5
        elif name.endswith("norm.weight") or ".norm" in name:
            param.data = 1 + 0.1 * torch.randn(param.shape, generator=generator)
            continue
        else:
            std = 0.02
        param.data = std * torch.randn(param.shape, generator=generator)


def _rotary_buffers(prefixes: list[str], head_dim: int) -> dict[str, torch.Tensor]:
    """The ``inv_freq`` buffers the released files carry (unused at inference)."""
    inv_freq = RotaryTable(head_dim).inv_freq
    return {f"{p}.rotary.inv_freq": inv_freq.clone() for p in prefixes}


def _save(directory: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    return directory


def write_model(directory: Path, shape: str = "tiny", seed: int = 0) -> Path:
    """A random Kronos model checkpoint at ``shape``."""
    config = model_config(shape)
    model = KronosModel(config)
    randomise(model, torch.Generator().manual_seed(seed))
    state = dict(model.state_dict())
    attn = [f"transformer.{i}.self_attn" for i in range(config.n_layers)]
    state.update(_rotary_buffers(attn, config.d_model // config.n_heads))
    state.update(_rotary_buffers(["dep_layer.cross_attn"], config.d_model // 4))
    return _save(directory, config.to_dict(), state)


def write_tokenizer(directory: Path, shape: str = "tiny", seed: int = 1) -> Path:
    """A random Kronos tokenizer checkpoint at ``shape``."""
    config = tokenizer_config(shape)
    tokenizer = KronosTokenizer(config)
    generator = torch.Generator().manual_seed(seed)
    randomise(tokenizer, generator)
    state = dict(tokenizer.state_dict())
    blocks = [f"encoder.{i}.self_attn" for i in range(config.n_enc_layers - 1)]
    blocks += [f"decoder.{i}.self_attn" for i in range(config.n_dec_layers - 1)]
    state.update(_rotary_buffers(blocks, config.d_model // config.n_heads))
    state["post_quant_embed_pre.weight"] = 0.1 * torch.randn(config.d_model, config.s1_bits,
                                                             generator=generator)
    state["post_quant_embed_pre.bias"] = torch.zeros(config.d_model)
    dim = config.s1_bits + config.s2_bits
    state["tokenizer.bsq.basis"] = 2 ** torch.arange(dim - 1, -1, -1)
    state["tokenizer.bsq.group_basis"] = 2 ** torch.arange(config.group_size - 1, -1, -1)
    return _save(directory, config.to_dict(), state)


def write_pair(root: Path, shape: str = "tiny", seed: int = 0) -> tuple[Path, Path]:
    """``root/model`` and ``root/tokenizer`` at ``shape``."""
    return (write_model(Path(root) / "model", shape, seed),
            write_tokenizer(Path(root) / "tokenizer", shape, seed + 1))
