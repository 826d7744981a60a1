"""ALQ (Qu et al., CVPR 2020): the ``alq`` strategy and its multi-bit binary-basis quantizers.

- :mod:`.strategy`: the strategy (pruning rounds, bases and coordinates optimised in turn).
- :mod:`.quantizers`: weight groups, binary bases and multi-bit activations.
"""
