"""RTDMD stage 2, the hybrid policy gradient (METHODS.md §9; arXiv 2605.26108; ``Harahan/RTDMD:
rtdmd/trainers/grpo_trainer.py, bp_mixin.py, sde_with_logprob.py``), and the "simple sum" baseline, as functions of
the :class:`~genalign.algorithms.rtdmd.RTDMD` algorithm (``stage: 2``). Pure maths: :mod:`genalign.losses.rtdmd`.

``stage2_mode: hybrid`` (the paper's method), per iteration:

1. the student rolls out G samples per prompt with the CPS kernel (``sampler.kernel: cps``, η = ``sampler.
   noise_level``, 0.9 in the reference): steps 0..T−2 stochastic with (simplified) log-probs, the last deterministic;
2. the fake score trains on that rollout with the AC-DMD fake loss (stage 1's; ``fake_updates_per_generator: 1``
   trains it once per iteration as the reference does);
3. advantages per reward, per prompt, with the global std; A = Σ_k w_k A_k re-standardised and clipped to ±5
   (:func:`subgrpo_advantages`);
4. SubGRPO: PPO-clip (ε = ``clip_range``, 1e-5; no KL) on ``subgrpo_num_steps`` (2) of the T−1 stochastic steps,
   drawn from (run seed, iteration) — the same on every rank without a collective;
5. the deterministic last step x_{T−1} → x̂0 with gradient: ``last_dmd_weight``·L_DMD (AC-DMD at σ_s = 0 is DMD) +
   ``bp_weight``·mean relu(``hinge_margin`` − R_w), R_w = Σ_k w_k·r_k(decode(x̂0)) over the **differentiable**
   rewards, each as the reward outputs it: the reference's O(1) rescaling (CLIPScore/100, PickScore/26) is the
   reward's own option (``pickscore: {divide_by: 26}``; genalign's ``clip_score`` is the raw cosine already);
   ``hinge_on: log_reward`` (not the paper's) puts log(R_w + 1e-6) in the hinge instead of R_w. One backward unit per
   PPO step and one for the last step: the trainer averages the units, so the weights above are relative to one PPO
   step's loss (``pg_weight``). ``bp_steps: all`` (not the paper's; the default ``last`` is) puts the hinge instead
   on the x̂0 of the student's deterministic Euler chain from the rollout's x_T, differentiated through every step
   (:func:`deterministic_chain`); the DMD term stays on the rollout's last step unless ``dmd_steps: all`` (also
   ours) puts it on the chain's x̂0 too, so the regulariser acts on the steps the reward moves. ``anchor_weight``
   (ours) adds a regression of the chain's x̂0 to the frozen stage-2 start's on the samples it already got right
   (:func:`anchor_loss`). Tested on one process only: the
   chain runs the (DDP-wrapped) policy several times before one backward.

``stage2_mode: simple_sum`` (the DMDR-style baseline of arXiv 2603.28460, ``vvvvvjdy/dmdr``): stage 1's generator
step unchanged (the deterministic rollout, AC-DMD at a backward-simulated step k) plus ``bp_weight``·the same hinge on
the rewards of the student's x̂0 at that step: L = ``dm_weight``·L_AC-DMD + λ·mean relu(margin − R_w).

Both start from a stage-1 checkpoint (``init_from``: a checkpoint folder or a run folder, whose latest checkpoint is
taken): the student's weights (``init_from_ema``: the checkpoint's EMA of them) and, when the checkpoint has one, the
fake score's; the teacher stays the loaded pipeline. ``train.ema`` keeps an EMA of the stage-2 student, from the
weights it starts with; the trainer evaluates with it and ``scripts/bench/distill_toy.py --ema`` measures it. Not
built: the reference's swap of the DMD / fake-score time laws between the stages (both AC times use the sub-interval
law here, as in stage 1).
"""

from __future__ import annotations

import copy
import os
from typing import Dict, Tuple

import torch

from genalign.errors import CheckpointError, ConfigError, choices
from genalign.losses.gndm import ppo_clip_loss, ppo_ratio
from genalign.losses.rtdmd import (
    reward_hinge_loss, rtdmd_last_step_loss, subgrpo_advantages, subgrpo_steps,
    weighted_reward,
)

STAGE2_MODES = ("hybrid", "simple_sum")
HINGE_ON = ("reward", "log_reward")
BP_STEPS = ("last", "all")
_SUB_SALT = 1313
_LOG_EPS = 1e-6


def check_stage2_options(alg) -> None:
    if alg.stage2_mode not in STAGE2_MODES:
        raise ConfigError(f"'algorithm.stage2_mode' is {alg.stage2_mode!r}; valid choices: {choices(STAGE2_MODES)}")
    if alg.hinge_on not in HINGE_ON:
        raise ConfigError(f"'algorithm.hinge_on' is {alg.hinge_on!r}; valid choices: {choices(HINGE_ON)}")
    for k in ("bp_steps", "dmd_steps"):
        if getattr(alg, k) not in BP_STEPS:
            raise ConfigError(f"'algorithm.{k}' is {getattr(alg, k)!r}; valid choices: {choices(BP_STEPS)}")
    for k in ("clip_range", "adv_eps", "adv_clip"):
        if getattr(alg, k) <= 0:
            raise ConfigError(f"'algorithm.{k}' must be > 0, got {getattr(alg, k)}")
    for k in ("pg_weight", "last_dmd_weight", "bp_weight", "anchor_weight"):
        if getattr(alg, k) < 0:
            raise ConfigError(f"'algorithm.{k}' must be >= 0, got {getattr(alg, k)}")
    if alg.subgrpo_num_steps < 1:
        raise ConfigError(f"'algorithm.subgrpo_num_steps' must be >= 1, got {alg.subgrpo_num_steps}")
    if not alg.init_from:
        raise ConfigError("RTDMD stage 2 starts from a stage-1 checkpoint: set 'algorithm.init_from' to a stage-1 "
                          "checkpoint folder (or its run folder)")


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder as given, or the latest checkpoint of a run folder; one line when neither."""
    from genalign.core.checkpoint import latest_checkpoint

    if not os.path.isdir(path):
        raise ConfigError(f"'algorithm.init_from' is {path!r}, which is not a folder (a stage-1 checkpoint or run)")
    if os.path.exists(os.path.join(path, "trainer_state.json")):
        return path
    last = latest_checkpoint(path)
    if last is None:
        raise ConfigError(f"'algorithm.init_from' {path!r} is neither a checkpoint nor a run with a checkpoint")
    return last


def check_stage2_setup(alg, view) -> None:
    """What stage 2 needs from the run: rewards (a differentiable one for the hinge), and for the hybrid mode a CPS
    rollout with at least one stochastic step."""
    if not view.rewards:
        raise ConfigError("RTDMD stage 2 trains on rewards: list at least one under 'rewards'")
    if alg.bp_weight > 0 and not any(getattr(r, "differentiable", False) for r in view.rewards):
        raise ConfigError("RTDMD stage 2's reward backprop (bp_weight > 0) needs a differentiable reward (e.g. "
                          "digit_correctness, clipscore, pickscore); set bp_weight: 0 to train without it")
    if alg.stage2_mode == "hybrid":
        scfg = view.cfg.sampler
        if scfg.kernel != "cps" or scfg.num_steps < 2:
            raise ConfigError(f"RTDMD stage 2 (hybrid) rolls out with the CPS kernel: set sampler.kernel: cps and "
                              f"sampler.num_steps >= 2 (got kernel {scfg.kernel!r}, {scfg.num_steps} steps)")


def load_stage1(alg, view) -> str:
    """The stage-1 student's weights (or their EMA) into the generator (after the teacher copy exists); returns the
    checkpoint."""
    ck = resolve_checkpoint(alg.init_from)
    view.generator.load_checkpoint(ck)
    if alg.init_from_ema:
        load_student_ema(view.generator, ck)
    return ck


def load_student_ema(generator, ck: str) -> None:
    """A checkpoint's EMA of the student (``train.ema.decay`` > 0) into ``generator``, which holds the checkpoint's
    live weights: the LoRA folder ``ema/`` of a LoRA run, else (a full fine-tune, e.g. the toy students) the shadow
    tensors ``ema.shadow.<i>`` of ``extra_state.safetensors`` in the order of ``generator.trainable_parameters()``."""
    from genalign.core.checkpoint import read_safetensors

    if os.path.isdir(os.path.join(ck, "ema")):
        generator.load_checkpoint(os.path.join(ck, "ema"))
        return
    f = os.path.join(ck, "extra_state.safetensors")
    extra = read_safetensors(f) if os.path.exists(f) else {}
    params = generator.trainable_parameters()
    shadow = [extra.get(f"ema.shadow.{i}") for i in range(len(params))]
    if any(s is None or s.shape != p.shape for s, p in zip(shadow, params)) or f"ema.shadow.{len(params)}" in extra:
        raise CheckpointError(f"checkpoint '{ck}' has no EMA of this student (train.ema.decay was 0, or another "
                              f"model)")
    with torch.no_grad():
        for p, s in zip(params, shadow):
            p.copy_(s.to(p.dtype))


def load_stage1_fake(alg, ck: str) -> bool:
    """The stage-1 fake score into the fake-score part, when the checkpoint has one (else it starts as a copy of the
    stage-1 student)."""
    from genalign.core.checkpoint import read_safetensors

    f = os.path.join(ck, "parts", "fake_score.safetensors")
    if not os.path.exists(f):
        return False
    alg.fake.load_state_dict(read_safetensors(f))
    return True


def stage2_phases(alg, iteration: int):
    from genalign.core.phases import Phase

    if alg.stage2_mode == "simple_sum":
        return None  # stage 1's phases
    out = [Phase(alg.fake_parts(), needs=alg.needs() | {"log_probs"}, name="fake_score")]
    if alg.trains_generator(iteration):
        out.append(Phase(("policy",), needs=alg.needs() | {"log_probs", "rewards"}, name="generator"))
    return out


def sub_steps(alg, view, num_steps: int) -> Tuple[int, ...]:
    """SubGRPO's trained steps of this iteration: ``subgrpo_num_steps`` of the T−1 stochastic CPS steps."""
    n_sto = num_steps - 1
    return subgrpo_steps(view.seed(_SUB_SALT), n_sto, min(alg.subgrpo_num_steps, n_sto))


def bp_reward(view, x0: torch.Tensor, ro) -> torch.Tensor:
    """R_w of the decoded x̂0 over the differentiable rewards (keeps the graph)."""
    rewards = [r for r in view.rewards if getattr(r, "differentiable", False)]
    images = view.generator.decode(x0)
    meta = ro.metadata or None
    cols = [r(images, ro.prompts, meta).to(x0.device) for r in rewards]
    per = torch.nan_to_num(torch.stack(cols, 1), nan=0.0)  # a reward that does not apply contributes nothing
    return weighted_reward(per, [float(r.weight) for r in rewards])


def reward_backprop(alg, view, x0: torch.Tensor, ro) -> Tuple[torch.Tensor, Dict[str, float]]:
    """mean relu(margin − R_w) on the decoded x̂0 through the differentiable rewards (``bp_mixin.py``)."""
    r_w = bp_reward(view, x0, ro)
    hinge = reward_hinge_loss(hinge_input(r_w, alg.hinge_on), alg.hinge_margin)
    return hinge, {"bp_reward": float(r_w.detach().mean()), "hinge": float(hinge.detach())}


def hinge_input(r_w: torch.Tensor, hinge_on: str = "reward") -> torch.Tensor:
    """What the hinge sees: R_w (``reward``, the reference's) or log(R_w + 1e-6) (``log_reward``; this library's
    option, not the paper's, for a reward in [0, 1] such as a class probability p: ∇p = p(δ − p)∇logits vanishes
    on confidently wrong samples, ∇log p does not)."""
    if hinge_on == "log_reward":
        return torch.log(r_w.clamp_min(0) + _LOG_EPS)
    return r_w


def make_anchor(alg, view) -> None:
    """``anchor_weight > 0``: a frozen copy of the student as stage 2 starts (stage 1's weights or their EMA); not a
    part, not checkpointed: a resumed run rebuilds it from ``init_from``."""
    alg.anchor = None
    if alg.anchor_weight > 0:
        alg.anchor = copy.deepcopy(view.generator.denoiser).requires_grad_(False).eval()


def anchor_loss(alg, view, ro, pos, chain: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
    """``anchor_weight`` (this library's option, not the paper's): mean_n m_n·mean((x̂0_n − a_n)²), a_n the frozen
    stage-2 start's deterministic x̂0 from the same x_T and m_n = [R_w(a_n) >= anchor_min_reward]: the noise that
    already gave a rewarded sample keeps its sample, the rest is free for the reward — aiming at the start's
    distribution restricted to its rewarded samples, instead of sharpening them all."""
    with torch.no_grad():
        a = deterministic_chain(view, ro, pos, model=alg.anchor)
        m = (bp_reward(view, a, ro) >= alg.anchor_min_reward).float()
    loss = (m * ((chain.float() - a) ** 2).flatten(1).mean(1)).mean()
    return loss, {"anchor_loss": float(loss.detach()), "anchor_frac": float(m.mean())}


def deterministic_chain(view, ro, pos, model=None) -> torch.Tensor:
    """``bp_steps: all`` (this library's option, not the paper's): the student's deterministic Euler chain over the
    rollout's sigmas from the rollout's initial noise x_T — the sampler it is evaluated and exported with —
    differentiated end to end (DRaFT-style), so the hinge's gradient reaches the early steps where a sample's class
    is decided, not only the last one (σ_{T−1} → 0). Returns the chain's x̂0 with gradient."""
    gen, sch, dev = view.generator, ro.schedule, view.device
    x = ro.states[:, 0].to(dev).float()
    model = view.module("policy") if model is None else model
    for k in range(sch.num_steps):  # the law's deterministic step (the flow Euler step x + (σ' − σ)·v), with grad
        v = gen.predict(model, x, sch.timesteps[k].to(dev), pos, 1.0)
        x = gen.kernel_step(v, x, k, sch, view.cfg.sampler, False).prev_sample
    return x


def hybrid_units(alg, view, batch) -> int:
    return len(sub_steps(alg, view, batch.rollout.schedule.num_steps)) + 1


def hybrid_losses(alg, view, batch, items):
    """SubGRPO's PPO-clip on the seeded stochastic steps, then the deterministic last step's DMD + hinge."""
    mb, adv = alg.minibatch(batch, items)
    adv = adv.to(view.device)
    T = mb.schedule.num_steps
    ar = torch.arange(len(mb))
    for j in sub_steps(alg, view, T):
        jj = torch.full((len(mb),), j, dtype=torch.long)
        lp, _, _ = view.step_log_prob(mb, jj)
        ratio = ppo_ratio(lp, mb.log_probs[ar, jj].to(lp.device))
        loss, st = ppo_clip_loss(ratio, adv, alg.clip_range)
        yield alg.pg_weight * loss, {"policy_loss": float(loss.detach()), "ratio": float(ratio.detach().mean()),
                                     **st}
    pos, cond_cfg = alg.conditioning(view, mb.prompts)
    need_chain = "all" in (alg.bp_steps, alg.dmd_steps) or alg.anchor_weight > 0
    chain = deterministic_chain(view, mb, pos) if need_chain else None
    if alg.dmd_steps == "all":  # DMD (σ_s = 0) on the chain's x̂0, through every step
        dm, g = alg.ac_dmd_at(view, chain, 0.0, mb.seeds, pos, cond_cfg)
        x_s, st = chain, {"dm_grad_abs": float(g.abs().mean()), "sim_step": float(T - 1), "sigma_s": 0.0}
    else:
        dm, x_s, _, st = alg.ac_dmd_term(view, mb, T - 1, pos, cond_cfg)  # σ_s = 0: x_s is the final x̂0
    hinge, bst = reward_backprop(alg, view, x_s if alg.bp_steps == "last" else chain, mb)
    loss = rtdmd_last_step_loss(dm, hinge, alg.last_dmd_weight, alg.bp_weight)
    if alg.anchor_weight > 0:
        la, ast = anchor_loss(alg, view, mb, pos, chain)
        loss, bst = loss + alg.anchor_weight * la, {**bst, **ast}
    yield loss, {"last_dm_loss": float(dm.detach()), "last_loss": float(loss.detach()), **st, **bst}


def simple_sum_loss(alg, view, batch, ro):
    """The baseline: stage 1's generator loss + λ·hinge on the rewards of the student's x̂0 at the same step."""
    pos, cond_cfg = alg.conditioning(view, ro.prompts)
    k = alg.simulation_step(view, ro.schedule.num_steps)
    dm, _, x0, st = alg.ac_dmd_term(view, ro, k, pos, cond_cfg)
    hinge, bst = reward_backprop(alg, view, x0, ro)
    loss = rtdmd_last_step_loss(dm, hinge, alg.dm_weight, alg.bp_weight)  # the same weighted sum, other weights
    return loss, {"dm_loss": float(dm.detach()), **st, **bst}


def stage2_advantages(alg, per_reward, weights, group_ids):
    adv = subgrpo_advantages(per_reward, weights, group_ids, alg.adv_eps, alg.adv_clip)
    return adv, {"adv_abs": float(adv.abs().mean())}, torch.ones(adv.shape[0], dtype=torch.bool)
