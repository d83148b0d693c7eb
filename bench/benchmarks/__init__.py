"""Benchmark scripts: each module has `main(quick: bool = False) -> dict`."""
