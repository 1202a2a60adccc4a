"""Service settings: ``configuration/kronos.yaml`` (or ``KRONOS_CONFIG``), then ``KRONOS_*`` env."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

import yaml

from kronos_runtime.engine import Priority

SOURCE_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = SOURCE_ROOT / "configuration" / "kronos.yaml"
BENTO_MANIFEST = SOURCE_ROOT.parent / "bento.yaml"  # present when running from a built Bento
ENV_PREFIX = "KRONOS_"


@dataclass(frozen=True)
class Settings:
    model: str = ""
    tokenizer: str = ""
    model_revision: str = ""
    tokenizer_revision: str = ""
    hub_cache_dir: str = ""
    dev_fallback: bool = True
    variants: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0
    max_context: int = 0
    sliding: str = "exact"
    cuda_graphs: bool = True
    default_pred_len: int = 24
    max_pred_len: int = 512
    max_lookback: int = 2048
    max_sample_count: int = 32
    max_batch_items: int = 64
    default_temperature: float = 1.0
    default_top_k: int = 0
    default_top_p: float = 0.9
    default_sample_count: int = 1
    max_batch_series: int = 64
    max_batch_rows: int = 256
    batching: str = "continuous"
    chunk_tokens: int = 128
    step_tokens: int = 384
    short_cost: int = 512
    short_step_tokens: int = 192
    max_recomputing: int = 8
    starvation_s: float = 30.0
    background_share: float = 0.75
    max_queue: int = 1024
    max_request_cost: int = 2_000_000
    cost_budget_per_minute: float = 0.0
    workers: int = 1
    cpu: int = 2
    memory: str = "4Gi"
    gpu: int = 1
    timeout_s: float = 300.0
    drain_delay_s: float = 5.0
    log_level: str = "INFO"
    otlp_endpoint: str = ""
    otlp_protocol: str = "http"
    trace_sample_rate: float = 1.0
    api_keys: str = ""
    protect_metrics: bool = False
    max_request_size_mb: float = 16.0
    rate_limit_per_minute: int = 0
    store_url: str = ""
    data_dir: str = ""
    record_forecasts: bool = True
    store_inputs: bool = False
    retention_days: float = 30.0
    record_queue_size: int = 10000
    jobs_enabled: bool = True
    job_concurrency: int = 8
    job_lease_s: float = 30.0
    job_max_attempts: int = 3
    job_poll_s: float = 0.2
    amqp_url: str = ""
    amqp_queue: str = "kronos.forecast"
    amqp_prefetch: int = 4
    amqp_priority: str = "background"
    amqp_max_retries: int = 3
    amqp_required_for_ready: bool = False
    amqp_record_jobs: bool = False
    max_backtest_folds: int = 200
    cache_max_entries: int = 1024
    cache_url: str = ""
    cache_ttl_s: float = 3600.0
    rate_limit_url: str = ""
    trusted_proxies: str = ""
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: int = 5
    max_connections: int = 0
    offload_body_kb: int = 64

    @property
    def torch_threads(self) -> int:
        """CPU threads per worker: ``threads``, else the worker's share of ``cpu`` (never more
        threads than cores across workers: OpenMP teams spinning on shared cores slow everyone)."""
        return self.threads or max(1, self.cpu // max(1, self.workers))

    @property
    def uses_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def max_list_items(self) -> int:
        """The longest list any legal request holds (rows, timestamps, batch items)."""
        return max(self.max_lookback, self.max_pred_len, self.max_batch_items)


def _coerce(kind: type, name: str, raw: object) -> object:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"setting {name}: expected a boolean, got {raw!r}")
    try:
        return kind(raw) if raw is not None else kind()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"setting {name}: expected {kind.__name__}, got {raw!r}") from exc


def bento_manifest(manifest: Path = BENTO_MANIFEST) -> dict | None:
    """The ``bento.yaml`` of the Bento we run from, or None outside a Bento."""
    if SOURCE_ROOT.name != "src" or not manifest.is_file():
        return None
    return yaml.safe_load(manifest.read_text()) or {}


def bento_envs(manifest: Path = BENTO_MANIFEST) -> dict[str, str]:
    """The ``envs`` recorded in the Bento we run from (the model tags it carries), if any.

    Containers get them as ENV; ``bentoml serve <bento tag>`` does not, so we apply them here.
    """
    entries = (bento_manifest(manifest) or {}).get("envs") or []
    return {e["name"]: str(e.get("value", "")) for e in entries if "name" in e}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < YAML file < the Bento's recorded envs < environment variables."""
    environ = {**bento_envs(), **(os.environ if environ is None else environ)}
    path = Path(environ.get("KRONOS_CONFIG", DEFAULT_CONFIG))
    values: dict[str, object] = {}
    if path.is_file():
        values.update(yaml.safe_load(path.read_text()) or {})
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}")
    for name in known:
        if ENV_PREFIX + name.upper() in environ:
            values[name] = environ[ENV_PREFIX + name.upper()]
    types = {"str": str, "int": int, "float": float, "bool": bool}
    coerced = {name: _coerce(types[known[name].type], name, value) for name, value in values.items()}
    return check(dataclasses.replace(Settings(), **coerced))


def check(settings: Settings) -> Settings:
    """Fail fast on contradictory settings (a default past its own limit)."""
    if settings.batching not in ("continuous", "request"):
        raise ValueError(f"setting batching: 'continuous' or 'request', got {settings.batching!r}")
    for default, limit in (("default_pred_len", "max_pred_len"),
                           ("default_sample_count", "max_sample_count")):
        if getattr(settings, default) > getattr(settings, limit):
            raise ValueError(f"setting {default}={getattr(settings, default)} exceeds "
                             f"{limit}={getattr(settings, limit)}")
    if settings.amqp_prefetch < 1 or settings.amqp_max_retries < 0:
        raise ValueError("settings amqp_prefetch must be >= 1 and amqp_max_retries >= 0")
    Priority.parse(settings.amqp_priority)  # raises ValueError naming the accepted values
    return settings
