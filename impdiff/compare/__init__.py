"""Comparison of aligned taps: metrics, then localisation of the first divergence."""
