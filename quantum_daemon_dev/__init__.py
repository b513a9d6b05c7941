"""Tooling for the tests, the demo and the benchmarks: never imported by the daemon."""
