"""SMOL (Savarese et al.): the ``smol`` strategy and its noise-magnitude quantizers.

- :mod:`.strategy`: the strategy (noise magnitudes learned with the weights, then settled).
- :mod:`.quantizers`: the noise magnitudes read as widths, SMOL's odd grid and noisy PACT.
"""
