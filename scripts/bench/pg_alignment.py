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
    ... --variance       # which steps' noise makes a group's rewards differ (where the decisions are taken)
    ... --ascend 60      # reward backprop from the same weights: how far the reward can be climbed at all

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
    ap.add_argument("--variance", action="store_true", help="also: which steps' noise makes a group's rewards differ "
                    "(share every sample's noise before step j within a group, draw it independently from j on)")
    ap.add_argument("--ascend", type=int, default=0, help="also: N steps of Adam on the pathwise reward gradient "
                    "(reward backprop, 16 samples a step) and the held-out reward every 10: how far the reward can "
                    "be climbed at all from this model")
    ap.add_argument("--ascend-lr", type=float, default=1e-4)
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
        x = gen.initial_noise(seeds).float()
        gens = sample_generators(seeds, "cpu", salt=1)
        samples = _sample(gen, model, scfg, mask, gen.encode_for(prompts, scfg.guidance_scale, None), x,
                          lambda i: per_sample_randn(x.shape[1:], gens, "cpu"))
        r = score(samples, prompts)
        (-r.mean()).backward()
        return -_flat(params), r.detach()

    def pg_grad(prompts, seeds):
        with torch.no_grad():
            ro = gen.rollout(prompts, seeds, scfg, window_start=window_start, group_ids=torch.arange(len(prompts)) // args.group)
        r = score(ro.samples, prompts)
        g = r.view(-1, args.group)
        within, between = float(g.std(1).mean()), float(g.mean(1).std())
        best.append(float(g.max(1).values.mean()))
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
    pgs, paths, steps, spreads, rbar, best = [], [], [], [], [], []
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
          f", between-prompt sd {sum(s[1] for s in spreads) / len(spreads):.3f}, best of a group "
          f"{sum(best) / len(best):.3f}; {time.process_time() - t0:.0f} CPU s")

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
    results = {"best_of_group": sum(best) / len(best),
               "schemes": {k: (pairs(gs, gs, True)[0], pairs(gs, paths, True)[0]) for k, gs in combos.items()},
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
    if args.variance:
        results["variance"] = _variance(gen, model, scfg, mask, all_prompts, score, args)
    if args.ascend:
        results["ascend"] = _ascend(gen, model, params, path_grad, score, scfg, window_start, all_prompts, cfg, args)
        torch.nn.utils.vector_to_parameters(theta, params)
    print(f"# total {time.process_time() - t0:.0f} CPU s")
    return results


def _sample(gen, model, scfg, mask, cond, x, noise_at):
    """The recipe's sampler from state x (gradients flow if enabled): on stochastic steps (``mask``) the step noise is
    ``noise_at(i)``; returns the decoded samples."""
    sch = gen.schedule(scfg.num_steps, scfg.shift)
    for i in range(scfg.num_steps):
        out = gen.predict(model, x, sch.timesteps[i], cond, scfg.guidance_scale)
        x = gen.kernel_step(out, x, i, sch, scfg, bool(mask[i]), noise=noise_at(i) if mask[i] else None).prev_sample
    return gen.decode(x)


@torch.no_grad()
def _variance(gen, model, scfg, mask, all_prompts, score, args):
    """Within-group reward sd when a group's samples share their noise (initial and per-step) before step j."""
    from genalign.models.base import per_sample_randn, sample_generators

    T, G = scfg.num_steps, args.group
    idx = torch.randperm(len(all_prompts), generator=torch.Generator().manual_seed(args.seed + 1))[: args.prompts]
    prompts = [all_prompts[i] for i in idx.tolist() for _ in range(G)]
    shared = [1000 * (k // G) for k in range(len(prompts))]
    own = [1000 * (k // G) + 1 + k % G for k in range(len(prompts))]
    sch = gen.schedule(T, scfg.shift)
    cond = gen.encode_for(prompts, scfg.guidance_scale, None)
    out_sd = []
    print("within-group reward sd when the noise before step j is shared in a group (j = 0: nothing shared)")
    for j in range(T + 1):
        x = gen.initial_noise(shared if j > 0 else own).float()
        gs, go = sample_generators(shared, "cpu", salt=1), sample_generators(own, "cpu", salt=1)

        def noise_at(i, j=j):  # both streams advance every stochastic step; the shared one is used before step j
            ns, no = per_sample_randn(x.shape[1:], gs, "cpu"), per_sample_randn(x.shape[1:], go, "cpu")
            return ns if i < j else no

        r = score(_sample(gen, model, scfg, mask, cond, x, noise_at), prompts).view(-1, G)
        out_sd.append(float(r.std(1).mean()))
        print(f"  j {j} (sigma {float(sch.sigmas[min(j, T)]):.3g}): within-group sd {out_sd[-1]:.3f}")
    return out_sd


def _ascend(gen, model, params, path_grad, score, scfg, window_start, all_prompts, cfg, args):
    """Reward backprop (Adam on the pathwise gradient): the held-out reward (every 3rd eval prompt x 2 seeds,
    the training sampler) every 10 steps."""
    from genalign.io import read_prompts

    ev_path = cfg.data.eval_prompts if os.path.isabs(cfg.data.eval_prompts) else os.path.join(REPO, cfg.data.eval_prompts)
    ev = [p for p in read_prompts(ev_path)[::3] for _ in range(2)]
    ev_seeds = [1000 + k % 2 for k in range(len(ev))]
    opt = torch.optim.Adam(params, lr=args.ascend_lr)
    g = torch.Generator().manual_seed(args.seed + 2)
    curve = []
    print(f"reward backprop, lr {args.ascend_lr:g}, 16 samples a step: held-out reward")
    for it in range(args.ascend + 1):
        if it % 10 == 0 or it == args.ascend:
            with torch.no_grad():
                ro = gen.rollout(ev, ev_seeds, scfg, window_start=window_start)
            curve.append((it, float(score(ro.samples, ev).mean())))
            print(f"  step {it}: {curve[-1][1]:.3f}")
        if it == args.ascend:
            break
        idx = torch.randint(len(all_prompts), (16,), generator=g).tolist()
        path_grad([all_prompts[i] for i in idx], [200_000 + 16 * it + k for k in range(16)])  # .grad = -grad R
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return curve


if __name__ == "__main__":
    main()
