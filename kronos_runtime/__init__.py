"""Kronos runtime: tokenizer, model and a fast forecaster for the public Kronos checkpoints."""
from .config import ModelConfig, TokenizerConfig
from .errors import CheckpointError, InputError
from .forecaster import ForecastRequest, ForecastResult, KronosForecaster
from .loading import load_model, load_tokenizer, resolve_checkpoint_dir
from .model import KronosModel
from .sampling import SamplingParams
from .tokenizer import KronosTokenizer

__all__ = ["CheckpointError", "ForecastRequest", "ForecastResult", "InputError", "KronosForecaster",
           "KronosModel", "KronosTokenizer", "ModelConfig", "SamplingParams", "TokenizerConfig",
           "load_model", "load_tokenizer", "resolve_checkpoint_dir"]
