"""Benchmark workloads and the ``make bench`` runner (see run.py)."""
