"""Helpers shared by the test modules (see tests/README.md); imported as `tests.support.<module>`."""
