"""Test support shared by tests and benchmarks: fakes with fault knobs, quality measures."""
