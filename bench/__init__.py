"""Benchmarks, and the upstream double the gateway's tests share (``bench.upstream``)."""
