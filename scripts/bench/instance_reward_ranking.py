"""How well does an instance-to-set reward rank a prompt's samples by the attribute the exemplar set has?

On the toy world the exemplar set is the thick-stroke held-out digits (assets/toy/exemplars/thick_digits.safetensors),
so a useful instance-to-set reward should, *within one prompt's seeds*, score thick samples above thin ones —
that within-group ranking is all DRAGON's per-prompt split sees. This prints, for each candidate reward, the mean
(and worst) over the 10 digit prompts of the Spearman correlation between the reward and the sample's ink, on the
base model's samples (32 held-out seeds per prompt, the recipe's deterministic sampler), plus its correlation with
digit correctness (a reward that ranks by correctness instead would not move the stroke style).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/bench/instance_reward_ranking.py
"""

from __future__ import annotations

import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from toy_learning import held_out_samples  # noqa: E402

EXEMPLARS = os.path.join(REPO, "assets", "toy", "exemplars", "thick_digits.safetensors")
CANDIDATES = [
    ("centroid_similarity", {}),
    ("exemplar_loglik", {"shrinkage": 0.001}),
    ("exemplar_loglik", {"shrinkage": 0.01}),
    ("exemplar_loglik", {"shrinkage": 0.1}),
    ("exemplar_loglik", {"shrinkage": 1.0}),
]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main(n_seeds: int = 32) -> None:
    from genalign.config import load_config
    from genalign.registry import MODELS
    from genalign.rewards.base import build_reward
    from genalign.toy.data import ink

    os.chdir(REPO)
    cfg = load_config(os.path.join(REPO, "configs", "toy", "dragon_instance.yaml"))
    gen = MODELS.get(cfg.model.family).load(cfg.model, device="cpu")
    prompts = list(cfg.data.prompts)
    x, P = held_out_samples(gen, cfg.sampler, prompts, n_seeds)  # the same samples toy_learning.py scores
    ik = ink(x).double()
    corr = build_reward("digit_correctness")(x, P).double()
    print(f"base samples: {len(prompts)} prompts x {n_seeds} seeds")
    print("| reward | args | within-prompt Spearman(reward, ink): mean | worst prompt | Spearman(reward, correctness) |")
    print("|---|---|---|---|---|")
    for name, args in CANDIDATES:
        r = build_reward(name, {"encoder": "digits", "reference": EXEMPLARS, **args})
        s = r(x, P).double()
        groups = [slice(i * n_seeds, (i + 1) * n_seeds) for i in range(len(prompts))]
        rho_ink = [spearman(s[g], ik[g]) for g in groups]
        rho_corr = [spearman(s[g], corr[g]) for g in groups]
        print(f"| `{name}` | {args or ''} | {sum(rho_ink) / len(rho_ink):+.3f} | {min(rho_ink):+.3f} | "
              f"{sum(rho_corr) / len(rho_corr):+.3f} |", flush=True)


if __name__ == "__main__":
    main()
