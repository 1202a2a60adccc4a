#!/usr/bin/env python3
"""Print the pip options that take torch from the PyTorch CPU index (or ``TORCH_INDEX``).

Prints nothing when that index cannot be reached within 3 s (an offline or mirrored machine:
pip then uses its configured indexes), so an install never waits on pip's retries.
"""
import os
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"

index = os.environ.get("TORCH_INDEX", CPU_INDEX)
try:
    urllib.request.urlopen(index.rstrip("/") + "/", timeout=3).close()
except Exception:
    pass
else:
    print(f"--extra-index-url {index}")
