"""Benchmarks: scripts that run for minutes, run as modules from the repo root (``python -m benchmarks.kd``).

Not an installed package; :mod:`benchmarks.common` holds what every benchmark report shares.
"""
