"""A two-part algorithm and a learnable reward, loaded by dotted path as a user's would be (the parts-and-phases
contract: extra trained networks with their own optimisers, update ratios, learnable rewards, runs without
rewards)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genalign.algorithms.base import Algorithm
from genalign.core.phases import PartSpec, Phase
from genalign.core.seeding import torch_generator
from genalign.rewards.base import LearnableReward


def mean_rgb(samples: torch.Tensor) -> torch.Tensor:
    return samples.float().mean(dim=(2, 3))


@dataclass
class TwoPart(Algorithm):
    """A critic (a small second network, own optimiser) regressing the samples' brightness, stepped ``ratio`` times
    per policy step; the policy trains on a denoising loss at σ = ½ on its own samples. No rewards needed."""

    ratio: int = 3
    critic_lr: float = 5e-2
    needs_rewards = False
    needs_log_probs = False

    def declare_parts(self, view):
        torch.manual_seed(0)
        self.critic = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        return {"critic": PartSpec(self.critic, lr=self.critic_lr, betas=(0.5, 0.9))}

    def phases(self, iteration):
        return [Phase(("critic",), repeats=self.ratio, needs={"rollout"}), Phase(("policy",), needs={"rollout"})]

    def losses(self, view, batch, items):
        ro = batch.rollout.index(items)
        if view.phase.parts == ("critic",):
            feats = mean_rgb(ro.samples)
            pred = view.module("critic")(feats).squeeze(1)
            loss = ((pred - feats.mean(1)) ** 2).mean()
            yield loss, {"critic_loss": float(loss.detach())}
            return
        x0 = ro.states[:, -1].to(view.device)
        noise = torch.stack([torch.randn(x0.shape[1:], generator=torch_generator(s, 31)) for s in ro.seeds])
        x_t = 0.5 * x0 + 0.5 * noise
        pred = view.predict(x_t, torch.full((len(ro),), 500.0), ro.cond, 1.0)
        loss = ((pred - (noise - x0)) ** 2).mean()
        yield loss, {"denoise_loss": float(loss.detach())}


class LearnedBrightness(LearnableReward):
    """A learnable reward: a linear head on the mean colour, trained each iteration to predict the brightness of
    the current generations; scores are the head's predictions (gradient-free)."""

    registry_name = "learned_brightness"

    def __init__(self, lr: float = 5e-2):
        super().__init__()
        torch.manual_seed(1)
        self.head = torch.nn.Linear(3, 1)
        self.lr = lr
        self.trained_microbatches = 0

    def parts(self):
        return {"head": PartSpec(self.head, lr=self.lr)}

    def losses(self, view, batch, items):
        feats = mean_rgb(batch.rollout.samples[items]).to(view.device)
        pred = view.module("head")(feats).squeeze(1)
        self.trained_microbatches += 1
        yield ((pred - feats.mean(1)) ** 2).mean(), {}

    def score(self, samples, prompts, metadata):
        return self.head(mean_rgb(samples).to(self.head.weight.device)).squeeze(1)

    def state_dict(self):
        return {"trained_microbatches": torch.tensor(self.trained_microbatches)}

    def load_state_dict(self, sd):
        self.trained_microbatches = int(sd["trained_microbatches"])


class RecordsMetadata(LearnableReward.__mro__[1]):  # a plain Reward
    """Scores each sample by whether its prompt's ``colour`` field appears in the prompt (and records what it saw)."""

    seen: list = []

    def score(self, samples, prompts, metadata):
        RecordsMetadata.seen.extend(metadata)
        return torch.tensor([float(m.get("colour", "?") in p) for p, m in zip(prompts, metadata)])
