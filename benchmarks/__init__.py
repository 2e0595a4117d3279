"""Reproducible speed and memory comparisons; see benchmarks/RESULTS.md."""
