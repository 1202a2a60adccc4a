#!/usr/bin/env python
"""Write random-weight Kronos checkpoints (real HF layout) for tests and offline demos.

Example: python scripts/make_dev_checkpoint.py --shape small --out checkpoints/dev-small
writes checkpoints/dev-small/model and checkpoints/dev-small/tokenizer.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kronos_runtime.dev_checkpoint import MODEL_SHAPES, write_pair  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(MODEL_SHAPES), default="tiny")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model_dir, tokenizer_dir = write_pair(args.out, args.shape, args.seed)
    print(f"model: {model_dir}\ntokenizer: {tokenizer_dir}")


if __name__ == "__main__":
    main()
