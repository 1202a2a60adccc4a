#!/usr/bin/env python
"""Build a versioned Bento that carries the service, its configuration and model(s) from the store.

Resolves each model tag to its exact version, writes build/bentofile.<variant>.yaml from
bentofile.yaml (models, the env selecting them, labels: model, revision, git commit, and the
torch build for the variant), then runs ``bentoml build``. Prints the Bento tag.

  python scripts/build_bento.py --model kronos-small:latest                 # CPU image flavour
  python scripts/build_bento.py --model kronos-small:v1=90 --model kronos-small:v2=10 --variant gpu
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_VERSION = "12.6.3"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def resolve(spec: str) -> tuple[str, str]:
    """``name[:version][=weight]`` -> (exact tag, weight)."""
    import bentoml

    tag, _, weight = spec.partition("=")
    return str(bentoml.models.get(tag).tag), weight or "1"


def requirements_for(variant: str) -> list[str]:
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    if variant == "cpu":  # the CPU wheel: plain torch==X from PyPI is the multi-GB CUDA build
        lines = [line.replace("torch==2.13.0", "torch==2.13.0+cpu") for line in lines]
    return lines


def bentofile(models: list[tuple[str, str]], variant: str, wheels_dir: str | None) -> dict:
    import bentoml

    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    build = ROOT / "build"
    build.mkdir(exist_ok=True)
    requirements = build / f"requirements.{variant}.txt"
    requirements.write_text("\n".join(requirements_for(variant)) + "\n")
    python = config.setdefault("python", {})
    python["requirements_txt"] = str(requirements.relative_to(ROOT))
    docker = config.setdefault("docker", {})
    if wheels_dir:  # offline/air-gapped builds: torch from a local wheel directory in the image
        python["find_links"] = [wheels_dir]
        docker["env"] = {"UV_FIND_LINKS": wheels_dir, "PIP_FIND_LINKS": wheels_dir}
    elif variant == "cpu":
        python["extra_index_url"] = [TORCH_CPU_INDEX]
    docker["dockerfile_template"] = "deploy/Dockerfile.template"
    if variant == "gpu":
        docker["cuda_version"] = CUDA_VERSION
    envs = config.setdefault("envs", [])
    if len(models) == 1:
        envs.append({"name": "KRONOS_MODEL", "value": models[0][0]})
    elif models:
        envs.append({"name": "KRONOS_VARIANTS", "value": ",".join(f"{t}={w}" for t, w in models)})
    if variant == "gpu":
        envs.append({"name": "KRONOS_DEVICE", "value": "cuda"})
    config["models"] = [tag for tag, _ in models]
    labels = config.setdefault("labels", {})
    labels.update({"variant": variant, "git_commit": git_commit()})
    if models:
        info = bentoml.models.get(models[0][0]).info
        labels.update({"model": models[0][0].replace(":", "-"),
                       "model_source": str(info.metadata.get("model_source", "")).replace("/", "_")[-63:],
                       "model_revision": str(info.metadata.get("model_revision", "") or "none")[:63]})
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[],
                        help="model-store tag to carry, optionally =weight for A/B (repeatable)")
    parser.add_argument("--variant", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--version", help="Bento version (default: generated)")
    parser.add_argument("--wheels-dir", default=os.environ.get("KRONOS_WHEELS_DIR"),
                        help="extra local wheel directory (pip --find-links) for offline builds")
    args = parser.parse_args()
    models = [resolve(spec) for spec in args.model]
    config = bentofile(models, args.variant, args.wheels_dir)
    path = ROOT / "build" / f"bentofile.{args.variant}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [str(Path(sys.executable).with_name("bentoml")), "build", "-f", str(path),
               "--output", "tag", str(ROOT)]
    if args.version:
        command[3:3] = ["--version", args.version]
    done = subprocess.run(command, cwd=ROOT, text=True, capture_output=True)
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        return done.returncode
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
