"""Measurements, in two sub-packages by purpose.

* :mod:`textvision.bench.perf` — performance benchmarks: what a piece of code costs (kernels,
  kernel compile check, the GPU check, encoder forward, train step, data generation, the FLOP
  cost model), and ``bench/perf/suite`` (pytest-benchmark).
* :mod:`textvision.bench.experiments` — the experiment runner: models trained and evaluated
  through the CLI to answer a research question (fusion ablation, budget sweep, encoder sweep,
  pruning curve, grounding probe, linear probe), their plots and the README results section.
"""
