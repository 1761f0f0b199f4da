"""``python -m benchmarks [--quick] [--only B1,B3] [--out DIR]``"""
import sys

from benchmarks.runner import main

sys.exit(main())
