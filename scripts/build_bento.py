#!/usr/bin/env python
"""``bentoml build`` plus what bentofile.yaml cannot say: the git commit label and the GPU flavour.

The models come from the service's own declaration (the configuration in force, or ``--model``
here, which sets KRONOS_MODEL / KRONOS_VARIANTS for the build): a plain ``bentoml build`` packs
them too. Prints the Bento tag.

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
CUDA_VERSION = "12.6.3"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def model_env(specs: list[str]) -> dict[str, str]:
    """``--model`` values -> the env that makes the service declare those models."""
    if len(specs) == 1 and "=" not in specs[0]:
        return {"KRONOS_MODEL": specs[0]}
    return {"KRONOS_VARIANTS": ",".join(specs)} if specs else {}


def bentofile(variant: str, wheels_dir: str | None) -> Path:
    """bentofile.yaml, or a GPU / offline flavour of it under build/."""
    if variant == "cpu" and not wheels_dir:
        return ROOT / "bentofile.yaml"
    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    python, docker = config.setdefault("python", {}), config.setdefault("docker", {})
    if variant == "gpu":  # PyPI's torch is the CUDA build; the image gets a CUDA base
        python.pop("extra_index_url", None)
        docker["cuda_version"] = CUDA_VERSION
        config["envs"].append({"name": "KRONOS_DEVICE", "value": "cuda"})
        config["labels"]["variant"] = "gpu"
    if wheels_dir:  # offline/air-gapped builds: torch from a local wheel directory in the image
        python.pop("extra_index_url", None)
        python["find_links"] = [wheels_dir]
        if variant == "cpu":  # without the CPU index, name the CPU wheel (PyPI's torch is CUDA)
            requirements = ROOT / "build" / "requirements.cpu.txt"
            requirements.parent.mkdir(exist_ok=True)
            requirements.write_text((ROOT / "requirements.txt").read_text().replace(
                "torch==2.13.0", "torch==2.13.0+cpu"))
            python["requirements_txt"] = str(requirements.relative_to(ROOT))
        docker["env"] = {"UV_FIND_LINKS": wheels_dir, "PIP_FIND_LINKS": wheels_dir}
    path = ROOT / "build" / f"bentofile.{variant}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[],
                        help="model-store tag to carry, optionally =weight for A/B (repeatable)")
    parser.add_argument("--variant", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--version", help="Bento version (default: generated)")
    parser.add_argument("--wheels-dir", default=os.environ.get("KRONOS_WHEELS_DIR"),
                        help="extra local wheel directory (pip --find-links) for offline builds")
    args = parser.parse_args()
    command = [str(Path(sys.executable).with_name("bentoml")), "build", "-f",
               str(bentofile(args.variant, args.wheels_dir)), "--label", f"git_commit={git_commit()}",
               "--output", "tag", str(ROOT)]
    if args.version:
        command[3:3] = ["--version", args.version]
    env = {**os.environ, **model_env(args.model)}
    done = subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True)
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        return done.returncode
    print(done.stdout.strip().splitlines()[-1].removeprefix("__tag__:"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
