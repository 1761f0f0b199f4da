"""The GPU benchmark: one prepared script for a lent GPU machine (see `benchmarks.gpu.run`)."""
