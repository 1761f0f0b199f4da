"""``python -m benchmarks [--quick] [--only B1,B3] [--out DIR]``"""
import sys

from .speed import main

sys.exit(main())
