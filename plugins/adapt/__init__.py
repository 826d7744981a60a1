"""AdaPT (Kummer et al., 2021): the ``adapt`` strategy, its objectives and its fixed point.

- :mod:`.strategy`: fixed-point training whose per-layer ⟨WL, FL⟩ adapts between batches.
- :mod:`.objective`: AdaPT's analytical performance model and the objectives read off it.
- :mod:`.fixedpoint`: fixed-point numbers with stochastic rounding and the switching rules.
"""
