"""``python -m kronos_runtime``: see :mod:`kronos_runtime.cli`."""
import sys

from .cli import main

sys.exit(main())
