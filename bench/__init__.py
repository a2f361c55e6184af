"""Benchmarks and experiments against the engine and the running service; docs/benchmarks.md describes each."""
