"""Performance benchmarks: kernels, kernel compile check, GPU check, encoder forward, train step,
data generation, FLOP cost model (``python -m textvision.bench.perf.<name>``)."""
