"""Load Kronos checkpoints in the Hugging Face layout (config.json + weights).

A source is a local directory or a hub repository id (``NeoQuasar/Kronos-small``),
fetched through huggingface_hub with an optional revision and cache directory.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

from .config import ModelConfig, TokenizerConfig
from .errors import CheckpointError
from .layers import optimize_for_inference
from .model import KronosModel
from .tokenizer import KronosTokenizer

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Keys of the public checkpoints that inference does not use.
UNUSED_KEY_MARKERS = ("rotary.inv_freq", "post_quant_embed_pre.", "tokenizer.bsq.")

M = TypeVar("M", bound=nn.Module)


def resolve_checkpoint_dir(source: str | Path, revision: str | None = None,
                           cache_dir: str | Path | None = None) -> Path:
    """A local directory holding config.json and weights, downloading from the hub if needed."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise CheckpointError(f"checkpoint directory not found: {source}")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id=str(source), revision=revision,
                                  cache_dir=str(cache_dir) if cache_dir else None,
                                  allow_patterns=["config.json", *WEIGHT_FILES])
    except Exception as exc:  # network, auth, missing repo: all mean "cannot load"
        raise CheckpointError(f"cannot download {source}@{revision or 'main'} from the hub: "
                              f"{type(exc).__name__}: {exc}") from exc
    return Path(local)


def read_config(directory: Path) -> dict:
    try:
        return json.loads((directory / "config.json").read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory} has no config.json") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{directory}/config.json is not valid JSON: {exc}") from exc


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors`` (preferred) or ``pytorch_model.bin``."""
    safetensors_file, bin_file = (directory / name for name in WEIGHT_FILES)
    try:
        if safetensors_file.is_file():
            from safetensors.torch import load_file

            return load_file(str(safetensors_file))
        if bin_file.is_file():
            return torch.load(bin_file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights in {directory}: {exc}") from exc
    raise CheckpointError(f"{directory} has neither {' nor '.join(WEIGHT_FILES)}")


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` strictly, ignoring only keys inference never uses."""
    expected = module.state_dict()
    unused = [k for k in state if k not in expected and any(m in k for m in UNUSED_KEY_MARKERS)]
    unexpected = [k for k in state if k not in expected and k not in unused]
    missing = [k for k in expected if k not in state]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if unexpected or missing or wrong_shape:
        raise CheckpointError(f"{where}: weights do not match config (missing={missing[:5]}, "
                              f"unexpected={unexpected[:5]}, wrong shape={wrong_shape[:5]})")
    module.load_state_dict({k: state[k] for k in expected})


def _load(build: Callable[[dict], M], source: str | Path, device: str | torch.device,
          dtype: torch.dtype, revision: str | None, cache_dir: str | Path | None) -> M:
    directory = resolve_checkpoint_dir(source, revision, cache_dir)
    try:
        module = build(read_config(directory))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}/config.json: {exc}") from exc
    load_weights(module, read_state_dict(directory), str(directory))
    module = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    optimize_for_inference(module)
    return module


def load_tokenizer(source: str | Path, device: str | torch.device = "cpu",
                   revision: str | None = None, cache_dir: str | Path | None = None
                   ) -> KronosTokenizer:
    """The tokenizer, in eval mode and float32 (its bit decisions are precision sensitive)."""
    return _load(lambda c: KronosTokenizer(TokenizerConfig.from_dict(c)), source, device,
                 torch.float32, revision, cache_dir)


def load_model(source: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, revision: str | None = None,
               cache_dir: str | Path | None = None) -> KronosModel:
    """The Kronos model, in eval mode on ``device`` in ``dtype``."""
    return _load(lambda c: KronosModel(ModelConfig.from_dict(c)), source, device, dtype,
                 revision, cache_dir)


def release_freed_memory() -> None:
    """Hand memory freed while loading (the unpacked weights) back to the OS, where glibc allows.

    Without it the process keeps the replaced copies' pages: RSS would look like two copies.
    """
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to do
        pass
