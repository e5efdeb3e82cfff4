"""Benchmarks: run by hand or by make targets, never collected by pytest."""
