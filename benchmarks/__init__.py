"""Benchmarks: each prints instrumented/bare ratios measured side by side in one run."""
