"""Two experts by noise level (``model.base_from``): the trained weights denoise the early, high-noise steps and
the base model the rest, as Wan 2.2 splits its sampler between a high- and a low-noise expert. A mixin of
:class:`genalign.models.base.Generator`.

Why: a GRPO window (``sampler.train_timesteps: window``) trains only its steps, yet the network is shared across
noise levels, so the update spills over into the untrained low-noise steps with nothing to hold them (on the tones
world that drift cost correctness and all of the FAD rise; README "Tones world"). With ``base_from`` at the window's
end those steps are the base's own: nothing drifts, and the rollouts that score the policy are the samples the
composite produces. The base is the reference the KL uses (the adapter disabled; a frozen copy kept from load time
for full fine-tuning, so a checkpoint loaded later leaves it the base).
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def first_base_step(base_from, num_steps: int) -> int:
    """The first of ``num_steps`` steps the base denoises under ``model.base_from`` (``num_steps`` when it is off)."""
    return num_steps if base_from is None else min(num_steps, max(1, math.ceil(base_from * num_steps - 1e-9)))


def overlap_error(base_from, num_steps: int, last: int, what: str = "") -> ConfigError:
    k0 = first_base_step(base_from, num_steps)
    return ConfigError(f"'model.base_from' {base_from} hands steps {k0}..{num_steps - 1} of {num_steps} to the base, "
                       f"but the sampler's stochastic (trained) steps reach step {last}{what}; end the window before "
                       f"step {k0} (sampler.window_size / window_range) or raise model.base_from")


class TwoExperts:
    def base_step(self, num_steps: int) -> int:
        """The first of ``num_steps`` steps the base denoises (``num_steps`` when ``model.base_from`` is off)."""
        return first_base_step(self.cfg.base_from, num_steps)

    def check_expert_steps(self, mask: torch.Tensor) -> int:
        """``base_step`` for a sampler with stochastic steps ``mask``; a stochastic (trained) step on the base's
        steps is a configuration error: the policy's log-prob would be taken on a transition the base made."""
        T = int(mask.numel())
        k0 = self.base_step(T)
        if bool(mask[k0:].any()):
            raise overlap_error(self.cfg.base_from, T, int(torch.nonzero(mask).flatten()[-1]))
        return k0
