"""Throughput benchmarks (`make bench`)."""
