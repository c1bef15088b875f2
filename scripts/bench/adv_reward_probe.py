"""Probe the adversarial reward on the toy world without the trainer: does a discriminator trained on the base
model's samples (negatives) against the thick-stroke references (positives) reward thickness, and how does it
score the blobs that hack the `ink` proxy?

    PYTHONPATH=. python scripts/bench/adv_reward_probe.py [--steps 300] [--feature-norm reference]

Trains only the head (Adam, the recipe's lr) with the reward's own `losses` on fixed base samples (10 digits ×
32 seeds, stochastic), then scores held-out sets: base samples at other seeds, thick / thin real digits from the
training split (the references are held-out digits), and blobs (a dilated digit at full ink). Prints the
discriminator's monitors and the mean reward per set, the correlation of reward with ink among base samples, and
the rank correlation between rewarding on normalised and on raw tokens with the same head (the reference's quirk).
"""

import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class ProbeView:
    def __init__(self, head, iteration):
        self.head, self.iteration, self.device, self.rank, self.world = head, iteration, torch.device("cpu"), 0, 1

    def module(self, part):
        return self.head

    def seed(self, *parts):
        from genalign.core.seeding import derive_seed

        return derive_seed(0, self.iteration, *parts)

    def all_reduce(self, t, op="sum"):
        return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--feature-norm", default="reference")
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from genalign.config import load_config
    from genalign.core.phases import Batch
    from genalign.registry import MODELS
    from genalign.rewards.base import build_reward
    from genalign.toy import data as D

    cfg = load_config("configs/toy/adv_grpo.yaml")
    gen = MODELS.get(cfg.model.family).load(cfg.model, device="cpu")
    prompts = [D.make_prompt(d) for d in range(10)]

    def samples(seed0, n):
        P = [p for p in prompts for _ in range(n)]
        S = [seed0 + i for _ in prompts for i in range(n)]
        with torch.no_grad():
            return torch.cat([gen.rollout(P[a:a + 40], S[a:a + 40], cfg.sampler, num_steps=cfg.sampler.eval_num_steps,
                                          stochastic=False).samples for a in range(0, len(P), 40)]), P

    t0 = time.time()
    train_x, train_p = samples(0, 32)
    test_x, test_p = samples(5000, 16)
    r = build_reward("adversarial", {**cfg.rewards[0].args, "feature_norm": args.feature_norm})
    head = r.parts()["discriminator"].module
    opt = torch.optim.Adam(head.parameters(), lr=args.lr, betas=(0.5, 0.999))
    ro = SimpleNamespace(samples=train_x, prompts=train_p, metadata=[], seeds=list(range(len(train_p))))
    g = torch.Generator().manual_seed(0)
    for it in range(args.steps):
        idx = torch.randperm(len(train_p), generator=g)[:40]
        (loss, st), = r.losses(ProbeView(head, it), Batch(iteration=it, rollout=ro), idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == args.steps - 1:
            print(f"step {it}: " + ", ".join(f"{k}={v:.3f}" for k, v in st.items()))
    real, _ = D.load_split("train")
    ink = D.ink(real)
    thick, thin = real[ink > D.THICK_INK][:160], real[ink < D.THIN_INK][:160]
    blobs = torch.nn.functional.max_pool2d(real[:160], 5, stride=1, padding=2)
    sets = {"base (held-out seeds)": test_x, "thick real (train split)": thick, "thin real": thin, "blobs": blobs}
    for name, x in sets.items():
        s = r(x, ["p"] * len(x))
        print(f"{name:26s} reward {s.mean():+.3f} ± {s.std():.3f}   ink {D.ink(x).mean():.3f}")
    s = r(test_x, test_p)
    c = torch.corrcoef(torch.stack([s, D.ink(test_x)]))[0, 1]
    print(f"corr(reward, ink) on base samples: {c:.3f};  monitors on held-out base: "
          + ", ".join(f"{k}={v:.3f}" for k, v in r.monitors(test_x, test_p).items()))
    norm = r.reward_norm
    r.reward_norm = not norm  # the same head, rewarding on the other convention
    other = r(test_x, test_p)
    r.reward_norm = norm

    def ranks(v):
        return v.argsort().argsort().double()

    rho = torch.corrcoef(torch.stack([ranks(s), ranks(other)]))[0, 1]
    print(f"Spearman(reward on {'normalised' if norm else 'raw'} tokens, reward on "
          f"{'raw' if norm else 'normalised'} tokens), base samples: {rho:.3f}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
