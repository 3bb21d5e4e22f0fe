"""Benchmarks: items (a benchmark's prompts and boxes as eligen layouts), scorers, sharded runs and reports."""
