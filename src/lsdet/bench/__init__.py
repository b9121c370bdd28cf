"""Benchmarks, each runnable as `python -m lsdet.bench.NAME` (see each module for its options)."""
