"""Benchmarks and the torture run (see docs/benchmarks.md and docs/torture.md)."""
