"""HAQ's reinforcement-learning search (Wang et al., CVPR 2019): the ``rl`` strategy and its agent.

- :mod:`.strategy`: the strategy (episodes over the layers under a cost budget).
- :mod:`.ddpg`: the DDPG agent with a one-dimensional action.
"""
