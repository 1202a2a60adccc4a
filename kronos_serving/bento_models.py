"""The service's models declared the BentoML way, so a plain ``bentoml build`` packs them.

From the configured ``model`` / ``variants``: a model-store tag becomes a
``bentoml.models.BentoModel`` (resolved to its exact version), a hub id a pair of
``bentoml.models.HuggingFaceModel`` (model and tokenizer). They are class attributes of the
service, which is how BentoML finds the models to record and pack at build time and to copy into
an image at ``bentoml containerize``. The Bento also records the env that selects exactly those
versions, so it serves its packed model(s) with no environment set.
"""
from __future__ import annotations

from pathlib import Path

import bentoml
from bentoml.models import BentoModel, HuggingFaceModel

from .routing import parse_variants
from .settings import Settings, bento_manifest
from .variants import DEFAULT_HUB_MODEL, DEFAULT_HUB_TOKENIZER


def exact_store_tag(tag: str) -> str | None:
    """``name[:version|latest]`` -> ``name:version`` when the store holds it, else None."""
    if not tag or Path(tag).expanduser().exists() or tag.count("/"):
        return None
    try:
        return str(bentoml.models.get(tag).tag)
    except (bentoml.exceptions.NotFound, bentoml.exceptions.BentoMLException, ValueError):
        return None


def is_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~")) \
        and not Path(model).expanduser().exists()


def configured_models(settings: Settings) -> list[tuple[str, float]]:
    """(model spec, weight) the settings ask for; the default hub model when none is set."""
    if settings.variants:
        return list(parse_variants(settings.variants))
    return [(settings.model or DEFAULT_HUB_MODEL, 1.0)]


def packed_refs(manifest: dict) -> dict[str, BentoModel | HuggingFaceModel]:
    """The models a Bento recorded, declared again in the same order when serving from it (BentoML
    matches the declarations to the recorded models one by one)."""
    from bentoml._internal.bento.bento import BentoModelInfo
    from bentoml._internal.utils.cattr import bentoml_cattr

    services = manifest.get("services") or [{}]
    infos = [bentoml_cattr.structure(m, BentoModelInfo) for m in services[0].get("models") or []]
    return {f"packed_{i}": info.to_model() for i, info in enumerate(infos)}


def model_refs(settings: Settings) -> dict[str, BentoModel | HuggingFaceModel]:
    """Class attributes declaring every configured model (directories and unknown tags: none);
    inside a Bento, the models it packed (what it serves is still up to the settings).

    BentoML resolves declared models before the server starts (a hub model is downloaded then),
    so with no model configured nothing is declared: the offline dev fallback keeps working.
    """
    manifest = bento_manifest()
    if manifest is not None:
        return packed_refs(manifest)
    if not (settings.model or settings.variants):
        return {}
    refs: dict[str, BentoModel | HuggingFaceModel] = {}
    for index, (spec, _) in enumerate(configured_models(settings)):
        exact = exact_store_tag(spec)
        if exact:
            refs[f"model_{index}"] = BentoModel(exact)
        elif is_hub_id(spec):
            refs[f"model_{index}"] = HuggingFaceModel(spec, revision=settings.model_revision or "main")
            refs[f"tokenizer_{index}"] = HuggingFaceModel(
                settings.tokenizer or DEFAULT_HUB_TOKENIZER,
                revision=settings.tokenizer_revision or "main")
    return refs


def selection_envs(settings: Settings) -> list[dict[str, str]]:
    """The env recorded in the Bento that selects exactly the declared versions (none when no
    model is configured: BentoML also passes these to the workers of a plain ``bentoml serve``,
    and an empty ``model`` must stay empty there for the dev fallback)."""
    if not (settings.model or settings.variants):
        return []
    specs = [(exact_store_tag(spec) or spec, weight) for spec, weight in configured_models(settings)]
    if settings.variants:
        return [{"name": "KRONOS_VARIANTS", "value": ",".join(f"{s}={w:g}" for s, w in specs)}]
    envs = [{"name": "KRONOS_MODEL", "value": specs[0][0]}]
    if is_hub_id(specs[0][0]):
        envs.append({"name": "KRONOS_TOKENIZER", "value": settings.tokenizer or DEFAULT_HUB_TOKENIZER})
    return envs


def model_labels(settings: Settings) -> dict[str, str]:
    """Bento labels naming the (first) model and its source revision."""
    spec = configured_models(settings)[0][0]
    exact = exact_store_tag(spec)
    metadata = dict(bentoml.models.get(exact).info.metadata) if exact else {}
    return {"model": (exact or spec).replace(":", "-").replace("/", "_")[-63:],
            "model_source": str(metadata.get("model_source", spec)).replace("/", "_")[-63:],
            "model_revision": str(metadata.get("model_revision") or settings.model_revision
                                  or "none")[:63]}


def declared_models(settings: Settings) -> type:
    """A base class holding :func:`model_refs` as class attributes, for the service to extend."""
    return type("DeclaredModels", (), model_refs(settings))
