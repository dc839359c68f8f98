"""acula benchmarks: `python benchmarks/run.py` measures speed, memory and correctness against the reference pipeline."""
