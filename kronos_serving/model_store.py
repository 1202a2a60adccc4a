"""Kronos checkpoints in the BentoML model store: import with metadata, resolve by tag."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import bentoml

from kronos_runtime.loading import WEIGHT_FILES, read_config, resolve_checkpoint_dir

MODEL_SUBDIR, TOKENIZER_SUBDIR = "model", "tokenizer"


@dataclass(frozen=True)
class ModelSource:
    """Where a model + tokenizer pair lives, and what is known about it."""

    name: str                  # store tag, directory or hub id: what the response calls "model"
    version: str               # store version, hub revision, or "local"
    model_dir: Path
    tokenizer_dir: Path
    max_context: int | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def is_dev(self) -> bool:
        return bool(self.metadata.get("dev_checkpoint"))


def sha256_of(directory: Path) -> str:
    """Digest of a checkpoint's weight file (the first present of WEIGHT_FILES)."""
    digest = hashlib.sha256()
    weights = next(directory / name for name in WEIGHT_FILES if (directory / name).is_file())
    with weights.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_model(name: str, model: str, tokenizer: str, model_revision: str | None = None,
                 tokenizer_revision: str | None = None, max_context: int = 512,
                 cache_dir: str | None = None, labels: dict[str, str] | None = None,
                 extra_metadata: dict | None = None) -> bentoml.Model:
    """Copy a model + tokenizer (local dirs or hub ids) into the store as a new version of ``name``."""
    model_dir = resolve_checkpoint_dir(model, model_revision, cache_dir)
    tokenizer_dir = resolve_checkpoint_dir(tokenizer, tokenizer_revision, cache_dir)
    metadata = {
        "model_source": str(model), "model_revision": model_revision or "",
        "tokenizer_source": str(tokenizer), "tokenizer_revision": tokenizer_revision or "",
        "model_sha256": sha256_of(model_dir), "tokenizer_sha256": sha256_of(tokenizer_dir),
        "model_config": json.dumps(read_config(model_dir), sort_keys=True),
        "tokenizer_config": json.dumps(read_config(tokenizer_dir), sort_keys=True),
        "max_context": int(max_context),
        **(extra_metadata or {}),
    }
    with bentoml.models.create(name, labels=labels or {}, metadata=metadata) as entry:
        for subdir, source in ((MODEL_SUBDIR, model_dir), (TOKENIZER_SUBDIR, tokenizer_dir)):
            target = Path(entry.path) / subdir
            target.mkdir(parents=True, exist_ok=True)
            for file in ("config.json", *WEIGHT_FILES):
                if (source / file).is_file():
                    shutil.copy2(source / file, target / file)
    return entry


def store_source(tag: str) -> ModelSource | None:
    """The store entry for ``tag`` (``name`` or ``name:version``), or None if there is none."""
    try:
        entry = bentoml.models.get(tag)
    except (bentoml.exceptions.NotFound, ValueError):
        return None
    path = Path(entry.path)
    if not (path / MODEL_SUBDIR).is_dir():
        return None
    metadata = dict(entry.info.metadata)
    return ModelSource(name=str(entry.tag), version=str(entry.tag.version), model_dir=path / MODEL_SUBDIR,
                       tokenizer_dir=path / TOKENIZER_SUBDIR,
                       max_context=int(metadata.get("max_context") or 0) or None, metadata=metadata)
