"""Training the embedded default model: a tiny Freeze-Omni on synthetic speech (see README.md)."""
