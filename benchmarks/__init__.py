"""siyu benchmarks: `make bench`."""
