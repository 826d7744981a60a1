"""DDPG with a one-dimensional action in [0, 1], as HAQ and AMC use it.

Deep deterministic policy gradient (Lillicrap et al., ICLR 2016) in the form
that AMC (He et al., ECCV 2018) introduced and HAQ (Wang et al., CVPR 2019) uses
(the paper's agent and implementation details; its code ``lib/rl/ddpg.py``):

- The actor maps a state to an action through fully connected layers of 400
  and 300 units and a sigmoid, so the action lies in [0, 1].
- The critic feeds the state and the action into two separate 400-unit layers,
  adds them, and goes on through 300 units to one value.
- Exploration draws the action from a normal distribution around the actor's
  output truncated to [0, 1] (:func:`truncated_normal`); the caller decays its
  σ per episode.
- Every transition of an episode carries the episode's final reward, and the
  critic's target is ``y = R - B + γ Q'(s', μ'(s'))`` with γ = 1 (episodic).
  ``B`` is a moving average of the sampled batches' mean reward
  (``B ← B + α (mean - B)``, α = 0.5), as HAQ's and AMC's code keep it.
- Adam (β = 0.9, 0.999) at 1e-4 for the actor and 1e-3 for the critic; target
  networks follow with τ = 0.01; batches of 64 from a replay buffer.

Everything runs on the CPU (the networks are tiny), and every random draw
(initial weights, noise, batches) comes from the agent's seed, so a run is
reproducible on a given thread count.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DDPG", "Actor", "Critic", "DDPGConfig", "ReplayBuffer", "truncated_normal"]


@dataclass(frozen=True)
class DDPGConfig:
    """The agent's hyperparameters; the defaults are HAQ's (the paper's, else its code's).

    Attributes:
        hidden: widths of the two hidden layers (the paper's 400 and 300; its code's
            default is 300 and 300).
        lr_actor / lr_critic: Adam learning rates.
        tau: soft update rate of the target networks.
        discount: γ; 1 for HAQ's episodic reward.
        batch_size: transitions per update.
        buffer_size: transitions the replay buffer keeps (HAQ: 128 per step of an episode).
        baseline_alpha: the moving-average rate of the reward baseline.
    """

    hidden: tuple[int, int] = (400, 300)
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    batch_size: int = 64
    buffer_size: int = 128 * 64
    baseline_alpha: float = 0.5


class Actor(nn.Module):
    """state -> 400 -> ReLU -> 300 -> ReLU -> 1 -> sigmoid: a deterministic action in [0, 1]."""

    def __init__(self, state_dim: int, hidden: tuple[int, int] = (400, 300)):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, hidden[0]), nn.ReLU(),
                                 nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
                                 nn.Linear(hidden[1], 1), nn.Sigmoid())

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class Critic(nn.Module):
    """Q(s, a): separate 400-unit layers for the state and the action, added, then 300 -> 1."""

    def __init__(self, state_dim: int, hidden: tuple[int, int] = (400, 300)):
        super().__init__()
        self.state_in = nn.Linear(state_dim, hidden[0])
        self.action_in = nn.Linear(1, hidden[0])
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
                                  nn.Linear(hidden[1], 1))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(self.state_in(state) + self.action_in(action))


def truncated_normal(mean: torch.Tensor | float, sigma: float, generator: torch.Generator,
                     low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """One draw per element of ``mean`` from N(mean, σ²) truncated to ``[low, high]``.

    Inverse-CDF sampling: ``u`` uniform between Φ((low - mean)/σ) and
    Φ((high - mean)/σ), then ``mean + σ Φ⁻¹(u)``, clipped to the interval against
    rounding. σ = 0 returns ``mean`` clipped.
    """
    mean = torch.as_tensor(mean, dtype=torch.float64)
    if sigma <= 0:
        return mean.clamp(low, high)
    lo = torch.special.ndtr((low - mean) / sigma)
    hi = torch.special.ndtr((high - mean) / sigma)
    u = lo + (hi - lo) * torch.rand(mean.shape, generator=generator, dtype=torch.float64)
    # Far outside the interval both CDFs round to 0 or 1; ndtri(0) is -inf, so keep u inside.
    u = u.clamp(torch.finfo(torch.float64).tiny, 1 - torch.finfo(torch.float64).eps)
    return (mean + sigma * torch.special.ndtri(u)).clamp(low, high)


class ReplayBuffer:
    """A ring buffer of transitions ``(state, action, reward, next_state, done)``."""

    def __init__(self, capacity: int, state_dim: int):
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be positive, not {capacity}")
        self.capacity = capacity
        self.states = torch.zeros(capacity, state_dim)
        self.next_states = torch.zeros(capacity, state_dim)
        self.actions = torch.zeros(capacity, 1)
        self.rewards = torch.zeros(capacity, 1)
        self.done = torch.zeros(capacity, 1)
        self.size = 0
        self._next = 0

    def __len__(self) -> int:
        return self.size

    def push(self, state: torch.Tensor, action: float, reward: float, next_state: torch.Tensor,
             done: bool) -> None:
        i = self._next
        self.states[i] = state
        self.next_states[i] = next_state
        self.actions[i, 0] = float(action)
        self.rewards[i, 0] = float(reward)
        self.done[i, 0] = float(done)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """A batch without replacement, or with replacement while the buffer holds fewer."""
        if self.size >= batch_size:
            idx = torch.randperm(self.size, generator=generator)[:batch_size]
        else:
            idx = torch.randint(self.size, (batch_size,), generator=generator)
        return (self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx],
                self.done[idx])


class DDPG:
    """The agent: act with truncated-normal exploration, remember transitions, update.

    Args:
        state_dim: length of a state vector.
        config: hyperparameters (HAQ's by default).
        seed: seeds the networks' initial weights, the noise and the batches.
    """

    def __init__(self, state_dim: int, config: DDPGConfig = DDPGConfig(), seed: int = 0):
        self.config = config
        self.generator = torch.Generator().manual_seed(int(seed))
        # Built under a forked global RNG: nn.Linear draws its initial weights from it,
        # and the trial's own global random state must not move.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.actor = Actor(state_dim, config.hidden)
            self.critic = Critic(state_dim, config.hidden)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.lr_actor,
                                            betas=(0.9, 0.999))
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=config.lr_critic,
                                             betas=(0.9, 0.999))
        self.buffer = ReplayBuffer(config.buffer_size, state_dim)
        self.baseline: float | None = None
        self.value_loss = float("nan")
        self.policy_loss = float("nan")

    def random_action(self) -> float:
        """An action uniform in [0, 1) (HAQ's warm-up episodes)."""
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def act(self, state: torch.Tensor, sigma: float) -> float:
        """The actor's action with truncated-normal noise of standard deviation ``sigma``."""
        with torch.no_grad():
            mean = self.actor(state.reshape(1, -1).float())[0, 0]
        return float(truncated_normal(float(mean), sigma, self.generator))

    def observe(self, state: torch.Tensor, action: float, reward: float, next_state: torch.Tensor,
                done: bool) -> None:
        self.buffer.push(state, action, reward, next_state, done)

    def update(self) -> tuple[float, float]:
        """One critic and one actor step on a sampled batch; returns (value loss, policy loss)."""
        c = self.config
        states, actions, rewards, next_states, done = self.buffer.sample(c.batch_size, self.generator)
        mean = float(rewards.mean())
        self.baseline = mean if self.baseline is None else \
            self.baseline + c.baseline_alpha * (mean - self.baseline)
        with torch.no_grad():
            next_q = self.critic_target(next_states, self.actor_target(next_states))
            target = rewards - self.baseline + c.discount * (1.0 - done) * next_q
        value_loss = nn.functional.mse_loss(self.critic(states, actions), target)
        self.critic_optim.zero_grad()
        value_loss.backward()
        self.critic_optim.step()

        policy_loss = -self.critic(states, self.actor(states)).mean()
        self.actor_optim.zero_grad()
        policy_loss.backward()
        self.actor_optim.step()

        for target_net, net in ((self.actor_target, self.actor), (self.critic_target, self.critic)):
            with torch.no_grad():
                for t, p in zip(target_net.parameters(), net.parameters()):
                    t.mul_(1.0 - c.tau).add_(p, alpha=c.tau)
        self.value_loss, self.policy_loss = float(value_loss.detach()), float(policy_loss.detach())
        return self.value_loss, self.policy_loss
