"""Where a run is recorded: run folders and TensorBoard writers (per-client curves, server
scalars, HParams and custom scalars) and the round-by-round History."""
