"""Reproducible benchmarks of the framework against asyncio and uvloop (see benchmarks/README.md)."""
