"""Helpers the tests share (on the path as ``support``: pytest puts ``tests/`` first, for its conftest)."""
