"""Testing aids: fault injection and a simulated service clock. Reached only by tests and benchmarks, never by
loraexp's own commands."""
