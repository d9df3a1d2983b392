"""Fast kernels for the engine, each checked against the engine's plain torch reference."""
