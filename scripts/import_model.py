#!/usr/bin/env python
"""Import a Kronos model + tokenizer into the BentoML model store as a new versioned tag.

Sources are hub ids (with revisions) or local checkpoint directories; ``--dev-shape`` imports a
generated random-weight checkpoint instead (offline demos and tests). Prints the new tag.

  python scripts/import_model.py --name kronos-small --model NeoQuasar/Kronos-small \
      --tokenizer NeoQuasar/Kronos-Tokenizer-base --revision main
  python scripts/import_model.py --name kronos-dev --dev-shape tiny
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kronos_runtime import CheckpointError  # noqa: E402
from kronos_runtime.dev_checkpoint import MAX_CONTEXT, MODEL_SHAPES, write_pair  # noqa: E402
from kronos_serving.model_store import import_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="model-store name, e.g. kronos-small")
    parser.add_argument("--model", help="hub id or local directory of the model")
    parser.add_argument("--tokenizer", help="hub id or local directory of the tokenizer")
    parser.add_argument("--revision", help="hub revision of the model")
    parser.add_argument("--tokenizer-revision", help="hub revision of the tokenizer")
    parser.add_argument("--max-context", type=int, default=512,
                        help="context of the model (512 for small/base, 2048 for mini)")
    parser.add_argument("--cache-dir", help="hub cache directory")
    parser.add_argument("--dev-shape", choices=sorted(MODEL_SHAPES),
                        help="import a generated random-weight checkpoint of this shape")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dev checkpoint")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    labels = dict(item.split("=", 1) for item in args.label)
    try:
        if args.dev_shape:
            with tempfile.TemporaryDirectory() as tmp:
                model_dir, tokenizer_dir = write_pair(Path(tmp), args.dev_shape, args.seed)
                entry = import_model(args.name, str(model_dir), str(tokenizer_dir),
                                     max_context=MAX_CONTEXT[args.dev_shape],
                                     labels={"kind": "dev-checkpoint", **labels},
                                     extra_metadata={"dev_checkpoint": True, "shape": args.dev_shape,
                                                     "seed": args.seed})
        else:
            if not (args.model and args.tokenizer):
                parser.error("--model and --tokenizer are required (or --dev-shape)")
            entry = import_model(args.name, args.model, args.tokenizer, args.revision,
                                 args.tokenizer_revision, args.max_context, args.cache_dir, labels)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(entry.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
