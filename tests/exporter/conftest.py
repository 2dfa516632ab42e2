"""Fixtures for the exporter tests: the tiny models live in tests/tiny.py and the
session-scoped `tiny` fixture in tests/conftest.py."""
