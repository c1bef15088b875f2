"""Is the policy-gradient signal there? Compare the GRPO score-function gradient with the pathwise reward gradient.

For a recipe whose first reward is differentiable, on the recipe's own sampler (same kernel, η, CFG, steps):

- ``g_path``: ∇θ E[R(x0)] by backpropagating the reward through the whole stochastic rollout with its noise held
  fixed (reparameterisation; unbiased for the same sampling distribution as the rollouts);
- ``g_pg``: ∇θ mean_i A_i Σ_j log π_θ(x_{j+1} | x_j) on rollouts drawn without gradient, A = group-normalised
  reward (what GRPO's clipped loss differentiates to at ratio 1; the ratio's gradient is the log-prob's).

Printed: cosines between independent estimates (pg·pg, path·path: each estimator's signal-to-noise) and between
the two (pg·path: is the score-function gradient aligned with the reward at all?), the same per trained step
(which steps carry the signal), the within- vs between-group reward spread, and the mean reward on common seeds
after a small step θ ± α·ĝ along each unit direction (does the direction raise the reward?).

    python scripts/bench/pg_alignment.py configs/toy/tones_grpo.yaml --prompts 6 --group 8 --batches 3
    python scripts/bench/pg_alignment.py configs/toy/flow_grpo.yaml   # a world where GRPO is known to learn

One CPU thread; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def _flat(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a[None], b[None]).item())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    ap.add_argument("--prompts", type=int, default=6, help="prompts per batch")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt")
    ap.add_argument("--batches", type=int, default=3, help="independent batches per estimator")
    ap.add_argument("--alphas", type=float, nargs="*", default=[1e-3, 3e-3, 1e-2],
                    help="step sizes for the line test, as a fraction of ||theta||")
    ap.add_argument("--line-prompts", type=int, default=12)
    ap.add_argument("--line-seeds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--early", type=int, default=0, help="also weigh only the first N trained steps (0 = half)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    from genalign.config import load_config
    from genalign.errors import GenalignError
    from genalign.io import read_prompts
    from genalign.models.base import per_sample_randn, sample_generators
    from genalign.registry import MODELS
    from genalign.rewards.base import build_reward

    cfg = load_config(os.path.join(REPO, args.recipe) if not os.path.isabs(args.recipe) else args.recipe, args.set)
    spec = cfg.rewards[0]
    reward = build_reward(spec.name, spec.args)
    if not getattr(reward, "differentiable", False):
        raise GenalignError(f"pg_alignment: the first reward '{spec.name}' is not differentiable; pick a recipe whose is")
    gen = MODELS.get(cfg.model.family).load(cfg.model)
    scfg = cfg.sampler
    params = [p for p in gen.trainable_parameters()]
    model = gen.denoiser
    all_prompts = read_prompts(os.path.join(REPO, cfg.data.prompts) if not os.path.isabs(cfg.data.prompts)
                               else cfg.data.prompts)
    rng = torch.Generator().manual_seed(args.seed)
    T = scfg.num_steps
    # window schemes: the window the trainer would draw first (window_range 0 pins it at step 0)
    window_start = 0 if scfg.train_timesteps in ("window", "sliding_window") else None
    mask = gen.stochastic_mask(T, scfg, window_start)
    train_steps = [i for i in range(T) if mask[i]]
    print(f"# {args.recipe}: family {cfg.model.family}, kernel {scfg.kernel}, eta {scfg.eta}, steps {T}, "
          f"CFG {scfg.guidance_scale}, trained steps {train_steps}, {sum(p.numel() for p in params)} trainable")

    def batch(b):
        idx = torch.randperm(len(all_prompts), generator=rng)[: args.prompts].tolist()
        prompts = [all_prompts[i] for i in idx for _ in range(args.group)]
        seeds = [10_000 * (b + 1) + k for k in range(len(prompts))]
        return prompts, seeds

    def score(samples, prompts):
        return reward.score(samples, prompts, [{} for _ in prompts]).float()

    def path_grad(prompts, seeds):
        model.zero_grad(set_to_none=True)
        sch = gen.schedule(T, scfg.shift)
        cond = gen.encode_for(prompts, scfg.guidance_scale, None)
        x = gen.initial_noise(seeds).float()
        gens = sample_generators(seeds, "cpu", salt=1)
        for i in range(T):
            out = gen.predict(model, x, sch.timesteps[i], cond, scfg.guidance_scale)
            noise = per_sample_randn(x.shape[1:], gens, "cpu") if mask[i] else None
            x = gen.kernel_step(out, x, i, sch, scfg, bool(mask[i]), noise=noise).prev_sample
        r = score(gen.decode(x), prompts)
        (-r.mean()).backward()
        return -_flat(params), r.detach()

    def pg_grad(prompts, seeds):
        with torch.no_grad():
            ro = gen.rollout(prompts, seeds, scfg, window_start=window_start, group_ids=torch.arange(len(prompts)) // args.group)
        r = score(ro.samples, prompts)
        g = r.view(-1, args.group)
        within, between = float(g.std(1).mean()), float(g.mean(1).std())
        adv = ((g - g.mean(1, keepdim=True)) / (r.std() + 1e-4)).reshape(-1)  # GRPO, global std
        per_step = []
        total = None
        for j in train_steps:
            model.zero_grad(set_to_none=True)
            lp, _, std = gen.step_log_prob(model, ro, torch.full((len(prompts),), j), scfg)
            step_std[j] = float(std.float().mean())
            (adv * lp).mean().backward()
            gj = _flat(params)
            per_step.append(gj)
            total = gj if total is None else total + gj
        return total, per_step, r, within, between

    step_std = {}
    t0 = time.process_time()
    pgs, paths, steps, spreads, rbar = [], [], [], [], []
    for b in range(args.batches):
        prompts, seeds = batch(b)
        g, per_step, r, w, bt = pg_grad(prompts, seeds)
        pgs.append(g)
        steps.append(per_step)
        spreads.append((w, bt))
        rbar.append(float(r.mean()))
        gp, _ = path_grad(prompts, seeds)
        paths.append(gp)
    print(f"# reward mean {sum(rbar) / len(rbar):.3f}; within-group sd {sum(s[0] for s in spreads) / len(spreads):.3f}"
          f", between-prompt sd {sum(s[1] for s in spreads) / len(spreads):.3f}; {time.process_time() - t0:.0f} CPU s")

    def pairs(xs, ys, same):
        out = [_cos(xs[i], ys[k]) for i in range(len(xs)) for k in range(len(ys)) if not (same and k <= i)]
        return sum(out) / max(len(out), 1), out

    first = train_steps[: args.early or max(1, len(train_steps) // 2)]
    schemes = {"plain": {j: 1.0 for j in train_steps},
               "std": {j: step_std[j] for j in train_steps},
               f"steps<={first[-1]}": {j: float(j in first) for j in train_steps},
               f"steps<={first[-1]}, std": {j: step_std[j] * float(j in first) for j in train_steps}}
    combos = {k: [sum(w[j] * s[n] for n, j in enumerate(train_steps)) for s in steps] for k, w in schemes.items()}
    print("per-step weighting schemes: cos pg.pg (independent) | pg.path (independent)")
    for k, gs in combos.items():
        print(f"  {k:18s} {pairs(gs, gs, True)[0]:+.3f} | {pairs(gs, paths, True)[0]:+.3f}")
    results = {"schemes": {k: (pairs(gs, gs, True)[0], pairs(gs, paths, True)[0]) for k, gs in combos.items()},
               "reward": sum(rbar) / len(rbar), "line": {}}
    for name, (m, vals) in {"pg . pg (independent batches)": pairs(pgs, pgs, True),
                            "path . path (independent batches)": pairs(paths, paths, True),
                            "pg . path (same batch)": (sum(_cos(a, b) for a, b in zip(pgs, paths)) / len(pgs), []),
                            "pg . path (independent)": pairs(pgs, paths, True)}.items():
        print(f"cos {name:36s} {m:+.3f}  " + " ".join(f"{v:+.2f}" for v in vals))
    path_mean = torch.stack(paths).mean(0)
    print("per trained step: cos(pg_j, mean path) and |pg_j| / |pg|")
    for k, j in enumerate(train_steps):
        c = sum(_cos(s[k], path_mean) for s in steps) / len(steps)
        share = sum(float(s[k].norm() / sum(x.norm() for x in s)) for s in steps) / len(steps)
        sig = float(gen.schedule(T, scfg.shift).sigmas[j])
        print(f"  step {j} (sigma {sig:.3g}, std {step_std[j]:.3g}): cos {c:+.3f}  norm share {share:.2f}")

    # line test: mean reward on common (prompt, seed) pairs after theta + a*|theta|*unit(g)
    lp_ = [all_prompts[i] for i in torch.randperm(len(all_prompts), generator=rng)[: args.line_prompts].tolist()]
    l_prompts = [p for p in lp_ for _ in range(args.line_seeds)]
    l_seeds = [50_000 + k for k in range(len(l_prompts))]
    theta = torch.nn.utils.parameters_to_vector(params).detach().clone()

    @torch.no_grad()
    def mean_reward(vec):
        torch.nn.utils.vector_to_parameters(vec, params)
        ro = gen.rollout(l_prompts, l_seeds, scfg, window_start=window_start)
        return float(score(ro.samples, l_prompts).mean())

    base = mean_reward(theta)
    dirs = {**{f"pg[{k}]": torch.stack(gs).mean(0) for k, gs in combos.items()}, "path": path_mean, "random": torch.randn(theta.numel(), generator=rng)}
    print(f"line test ({len(l_prompts)} common prompt x seed pairs): base reward {base:.4f}")
    for name, d in dirs.items():
        u = d / d.norm()
        cells = []
        for a in args.alphas:
            step = a * float(theta.norm()) * u
            up, down = mean_reward(theta + step) - base, mean_reward(theta - step) - base
            results["line"].setdefault(name, []).append((a, up, down))
            cells.append(f"{a:g}: {up:+.4f} / {down:+.4f}")
        print(f"  {name:22s} (+ / -)  " + "   ".join(cells))
    torch.nn.utils.vector_to_parameters(theta, params)
    print(f"# total {time.process_time() - t0:.0f} CPU s")
    return results


if __name__ == "__main__":
    main()
