"""The fleet provider: instances as in-process records, for scale benchmarks, chaos and tests."""
