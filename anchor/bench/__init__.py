"""Benchmarks behind ``anchor bench``: JSON with warm-up-excluded percentiles."""
