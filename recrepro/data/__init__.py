"""Raw data loaders and the benchmark builder (samples, temporal split, frozen candidates)."""
