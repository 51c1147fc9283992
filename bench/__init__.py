"""Benchmarks (run as scripts; they print figures and assert nothing)."""
