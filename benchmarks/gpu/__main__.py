"""``python -m benchmarks.gpu [--dry-run] --out DIR``: see benchmarks/gpu/run.py."""
import sys

from benchmarks.gpu.run import main

sys.exit(main())
