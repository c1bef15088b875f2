"""RTDMD stage 2 on the trainer (tiny sd3): it starts from a stage-1 checkpoint (student and fake score; the
teacher stays the loaded pipeline), the hybrid policy gradient trains the student on SubGRPO steps + the last step's
DMD + hinge reward backprop and the fake score on the rollout; the simple-sum baseline trains; bad setups refuse in
one line."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from genalign.errors import CheckpointError, ConfigError
from tests.algorithms.test_dmd2 import dmd2_config
from tests.algorithms.trainer_utils import changed, make_config, snapshot, trainer_for


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """A 2-iteration stage-1 (AC-DMD) run of the tiny sd3 student (full fine-tune, 3 steps)."""
    tmp = tmp_path_factory.mktemp("stage1")
    cfg = dmd2_config(tmp, "sd3", steps=3, rank=0)
    cfg.algorithm.name = "rtdmd"
    trainer_for(cfg).train()
    return cfg.run.output_dir


def stage2_config(tmp_path, stage1, mode="hybrid", **alg):
    algorithm = {"name": "rtdmd", "stage": 2, "init_from": stage1, "stage2_mode": mode,
                 "fake_updates_per_generator": 1, "real_guidance": 2.0, "pg_weight": 1.0, "last_dmd_weight": 1.0,
                 "bp_weight": 1.0, **alg}
    cfg = make_config(tmp_path, algorithm, rewards=[{"name": "brightness"}], family="sd3", iterations=2)
    cfg.sampler.num_steps = cfg.sampler.eval_num_steps = 3
    cfg.sampler.guidance_scale = 1.0
    cfg.sampler.kernel = "cps" if mode == "hybrid" else "ode"
    cfg.sampler.noise_level = 0.9
    cfg.model.lora.rank = 0
    return cfg


def _fake_state(tr):
    return {k: v.detach().clone() for k, v in tr.algorithm.fake.state_dict().items()}


def test_stage2_hybrid_starts_from_stage1_and_trains_student_and_fake_score(tmp_path, stage1_run):
    from genalign.core.checkpoint import latest_checkpoint

    ck = latest_checkpoint(stage1_run)
    cfg = stage2_config(tmp_path, stage1_run)
    tr = trainer_for(cfg)
    # the student and the fake score are stage 1's; the teacher is the loaded pipeline, not the student
    s1_fake = load_file(os.path.join(ck, "parts", "fake_score.safetensors"))
    for k, v in tr.algorithm.fake.state_dict().items():
        assert torch.equal(v, s1_fake[k]), k
    s1_student = {n: p.detach().clone() for n, p in tr.generator.denoiser.named_parameters()}

    fresh = trainer_for(dmd2_config(tmp_path / "fresh", "sd3", steps=3, rank=0))
    moved = [n for n, p in fresh.generator.denoiser.named_parameters() if not torch.equal(p, s1_student[n])]
    assert moved  # stage 1 trained the student
    ref = dict(tr.generator.ref_denoiser.named_parameters())
    for n, p in fresh.generator.denoiser.named_parameters():
        assert torch.equal(ref[n], p), n  # the teacher copy is the original pipeline
    names = [ph.name for ph in tr.algorithm.phases(0)]
    assert names == ["fake_score", "generator"]
    assert "rewards" in tr.algorithm.phases(0)[1].needs and "log_probs" in tr.algorithm.phases(0)[0].needs
    before, fake0 = snapshot(tr), _fake_state(tr)
    tr.train()
    assert changed(tr, before) == len(before)
    assert any(not torch.equal(v, tr.algorithm.fake.state_dict()[k]) for k, v in fake0.items())
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    r = rows[0]
    # two SubGRPO steps of the two stochastic CPS steps + the last step: three units per micro-batch
    assert tr.algorithm._units == 3
    for key in ("policy_loss", "ratio", "last_dm_loss", "hinge", "bp_reward", "fake_score/fake_loss"):
        assert key in r and r[key] == r[key], key
    assert r["hinge"] == pytest.approx(3.0 - r["bp_reward"], abs=1e-5)  # margin 3 above a [0, 1] reward
    assert r["sigma_s"] == 0.0  # the last step's DMD is at σ_s = 0
    assert tr.parts["policy"].steps == 2 and tr.parts["fake_score"].steps == 2


def test_stage2_hybrid_last_step_gradient_is_the_weighted_sum_of_its_terms(tmp_path, stage1_run):
    """The last unit's gradient = last_dmd_weight·∇DMD + bp_weight·∇hinge: checked against the two terms' own
    gradients on the same rollout (weights 0.3 and 2)."""
    from genalign.algorithms import rtdmd_stage2 as s2
    from genalign.core.phases import Batch, Phase

    cfg = stage2_config(tmp_path, stage1_run, last_dmd_weight=0.3, bp_weight=2.0)
    tr = trainer_for(cfg)
    alg, view = tr.algorithm, tr.view
    ro = tr.do_rollout(0, True)
    batch = Batch(0, rollout=ro, adv=torch.zeros(len(ro)))
    view.phase = Phase(("policy",), name="generator")
    params = tr.generator.trainable_parameters()

    def grad_of(loss):
        return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)

    items = list(range(len(ro)))
    *_, (last, _) = list(alg.losses(view, batch, items))
    g_total = grad_of(last)
    mb = ro.index(items)
    pos, cond = alg.conditioning(view, mb.prompts)
    dm, x_s, _, _ = alg.ac_dmd_term(view, mb, ro.schedule.num_steps - 1, pos, cond)
    hinge, _ = s2.reward_backprop(alg, view, x_s, mb)
    g_dm, g_h = grad_of(dm), grad_of(hinge)
    for a, b, c in zip(g_total, g_dm, g_h):
        if a is None:
            continue
        torch.testing.assert_close(a, 0.3 * b + 2.0 * c, atol=1e-6, rtol=1e-4)
    assert any(a is not None and float(a.abs().max()) > 0 for a in g_total)
    view.phase = None


def test_stage2_simple_sum_trains_with_reward_backprop(tmp_path, stage1_run):
    cfg = stage2_config(tmp_path, stage1_run, mode="simple_sum", fake_updates_per_generator=2)
    tr = trainer_for(cfg)
    assert [ph.name for ph in tr.algorithm.phases(1)] == ["fake_score", "generator"]
    assert "log_probs" not in tr.algorithm.phases(1)[1].needs
    before = snapshot(tr)
    tr.train()
    assert changed(tr, before) == len(before)
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    assert rows[1]["dm_loss"] > 0 and rows[1]["hinge"] == pytest.approx(3.0 - rows[1]["bp_reward"], abs=1e-5)


def test_stage2_refuses_bad_setups_in_one_line(tmp_path, stage1_run):
    from genalign.algorithms.rtdmd import RTDMD

    with pytest.raises(ConfigError, match="init_from"):
        RTDMD(stage=2)
    with pytest.raises(ConfigError, match="stage2_mode"):
        RTDMD(stage=2, init_from=stage1_run, stage2_mode="sum")
    with pytest.raises(ConfigError, match="valid choices: 1"):
        RTDMD(stage=3)
    with pytest.raises(ConfigError, match="'algorithm.hinge_on' is 'log'; valid choices: .*log_reward"):
        RTDMD(stage=2, init_from=stage1_run, hinge_on="log")
    cfg = stage2_config(tmp_path / "a", stage1_run)
    cfg.sampler.kernel = "ode"
    with pytest.raises(ConfigError, match="sampler.kernel: cps"):
        trainer_for(cfg)
    cfg = stage2_config(tmp_path / "b", stage1_run)
    cfg.algorithm.args["init_from"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="not a folder"):
        trainer_for(cfg)
    cfg = stage2_config(tmp_path / "c", stage1_run)
    cfg.rewards[0].name = "jpeg_compressibility"
    with pytest.raises(ConfigError, match="differentiable reward"):
        trainer_for(cfg)


def test_stage2_kill_and_resume_is_bit_identical(tmp_path, stage1_run):
    """A resumed stage-2 run loads its own checkpoint over the stage-1 weights it starts from: the student and the
    fake score end bit-identical to an uninterrupted run's."""
    from genalign.core.checkpoint import latest_checkpoint

    def cfg_for(run, iterations, resume=False):
        c = stage2_config(tmp_path / run, stage1_run)
        c.train.iterations, c.train.save_every, c.run.resume = iterations, 1, resume
        return c

    trainer_for(cfg_for("full", 2)).train()
    trainer_for(cfg_for("resumed", 1)).train()
    tr = trainer_for(cfg_for("resumed", 2, resume=True))
    assert tr.iteration == 1
    tr.train()
    out = []
    for run in ("full", "resumed"):
        ck = latest_checkpoint(str(tmp_path / run / "run"))
        sd = {f"fake.{k}": v for k, v in load_file(os.path.join(ck, "parts", "fake_score.safetensors")).items()}
        sd.update({f"student.{k}": v for k, v in load_file(
            os.path.join(ck, "transformer", "diffusion_pytorch_model.safetensors")).items()})
        out.append(sd)
    assert sorted(out[0]) == sorted(out[1])
    for k in out[0]:
        assert torch.equal(out[0][k], out[1][k]), k


def test_stage2_student_ema_starts_from_stage1_and_the_bench_evaluates_it(tmp_path, stage1_run):
    """``train.ema.decay`` applies to the stage-2 student: its EMA starts from the stage-1 weights (the teacher is not
    in it), is saved with each checkpoint, and scripts/bench/distill_toy.py's ``load_ema`` (``--ema``) puts those
    weights, not the live ones, into a freshly loaded student. One generator step at decay 0.5: EMA = (s1 + w1) / 2."""
    import importlib.util

    from genalign.core.checkpoint import latest_checkpoint
    from genalign.registry import MODELS

    path = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench", "distill_toy.py")
    spec = importlib.util.spec_from_file_location("distill_toy_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    cfg = stage2_config(tmp_path, stage1_run)
    cfg.train.ema.decay, cfg.train.iterations, cfg.train.save_every = 0.5, 1, 1
    tr = trainer_for(cfg)
    s1 = [p.detach().clone() for p in tr.generator.trainable_parameters()]
    ema = tr.parts["policy"].ema
    assert ema is not None and all(torch.equal(s, p) for s, p in zip(ema.shadow, s1))
    tr.train()
    assert tr.parts["policy"].steps == 1
    w1 = [p.detach().clone() for p in tr.generator.trainable_parameters()]
    want = [(a + b) / 2 for a, b in zip(s1, w1)]
    assert any(not torch.equal(a, b) for a, b in zip(s1, w1))  # the step moved the student: EMA ≠ live

    ck = latest_checkpoint(cfg.run.output_dir)
    gen = MODELS.get("sd3").load(cfg.model)
    gen.load_checkpoint(ck)
    for p, w in zip(gen.trainable_parameters(), w1):
        assert torch.equal(p, w)  # the checkpoint's live weights
    bench.load_ema(gen, ck)
    params = gen.trainable_parameters()
    assert len(params) == len(want)
    for p, w in zip(params, want):
        torch.testing.assert_close(p, w, rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match="no EMA"):  # a run without EMA (stage 1) says so in one line
        bench.load_ema(gen, latest_checkpoint(stage1_run))


def test_stage2_init_from_ema_starts_from_the_stage1_students_ema(tmp_path, stage1_run):
    """``init_from_ema``: stage 2's student (and so its own EMA) starts from the stage-1 checkpoint's EMA of the
    student, not its live weights; a stage-1 checkpoint without an EMA refuses in one line."""
    s1 = dmd2_config(tmp_path / "s1", "sd3", steps=3, rank=0)
    s1.algorithm.name = "rtdmd"
    s1.train.ema.decay = 0.5
    t1 = trainer_for(s1)
    t1.train()
    s1_ema = [s.detach().clone() for s in t1.parts["policy"].ema.shadow]
    s1_live = [p.detach().clone() for p in t1.generator.trainable_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(s1_ema, s1_live))

    cfg = stage2_config(tmp_path / "s2", s1.run.output_dir, init_from_ema=True)
    cfg.train.ema.decay = 0.9
    tr = trainer_for(cfg)
    params = tr.generator.trainable_parameters()
    assert len(params) == len(s1_ema)
    for p, s in zip(params, s1_ema):
        torch.testing.assert_close(p, s.to(p.dtype), rtol=0, atol=0)
    for s, p in zip(tr.parts["policy"].ema.shadow, params):
        assert torch.equal(s, p)  # the stage-2 EMA starts there too
    with pytest.raises(CheckpointError, match="has no EMA of this student"):
        trainer_for(stage2_config(tmp_path / "s2b", stage1_run, init_from_ema=True))


def test_stage2_log_reward_hinge_pinned_and_its_gradient_reaches_wrong_samples():
    """``hinge_on: log_reward``: mean relu(m − log(R + 1e-6)) against hand values; on a confidently wrong sample
    (p = 1e-3) its gradient is 1/(p + 1e-6) ≈ 999× the plain hinge's, on a right one (p = 0.9) 1/0.9×."""
    import math

    from genalign.algorithms.rtdmd_stage2 import hinge_input
    from genalign.losses.rtdmd import reward_hinge_loss

    r = torch.tensor([0.5, 1e-3, 0.999], dtype=torch.float64)
    got = reward_hinge_loss(hinge_input(r, "log_reward"), margin=-0.01)
    want = (max(0.0, -0.01 - math.log(0.5 + 1e-6)) + max(0.0, -0.01 - math.log(1e-3 + 1e-6)) + 0.0) / 3
    assert float(got) == pytest.approx(want, rel=1e-9)  # p = 0.999 > e^-0.01: no gradient, no loss
    assert torch.equal(hinge_input(r, "reward"), r)
    for p, ratio in ((1e-3, 1 / (1e-3 + 1e-6)), (0.9, 1 / (0.9 + 1e-6))):
        x = torch.tensor([p], dtype=torch.float64, requires_grad=True)
        g_log, = torch.autograd.grad(reward_hinge_loss(hinge_input(x, "log_reward"), 3.0), x)
        g_lin, = torch.autograd.grad(reward_hinge_loss(hinge_input(x, "reward"), 3.0), x)
        assert float(g_lin) == -1.0 and float(g_log / g_lin) == pytest.approx(ratio, rel=1e-9)


def test_stage2_bp_steps_all_backprops_the_hinge_through_the_deterministic_chain(tmp_path, stage1_run):
    """``bp_steps: all``: the hinge's x̂0 is the student's deterministic sampler (the one it is evaluated with) run
    from the rollout's x_T with gradient; the last unit's gradient = last_dmd_weight·∇DMD(last step) +
    bp_weight·∇hinge(chain), and it differs from ``bp_steps: last``'s."""
    from genalign.algorithms import rtdmd_stage2 as s2
    from genalign.algorithms.rtdmd import RTDMD
    from genalign.core.phases import Batch, Phase

    with pytest.raises(ConfigError, match="'algorithm.bp_steps' is 'first'; valid choices: .*all"):
        RTDMD(stage=2, init_from=stage1_run, bp_steps="first")
    cfg = stage2_config(tmp_path, stage1_run, last_dmd_weight=0.3, bp_weight=2.0, bp_steps="all")
    tr = trainer_for(cfg)
    alg, view, gen = tr.algorithm, tr.view, tr.generator
    ro = tr.do_rollout(0, True)
    items = list(range(len(ro)))
    mb = ro.index(items)
    pos, cond = alg.conditioning(view, mb.prompts)
    det = gen.rollout(mb.prompts, mb.seeds, cfg.sampler, stochastic=False, decode=False)
    with torch.no_grad():
        torch.testing.assert_close(s2.deterministic_chain(view, det, pos), det.states[:, -1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(s2.deterministic_chain(view, mb, pos), mb.states[:, -1], atol=1e-3)  # CPS ≠ ODE
    batch = Batch(0, rollout=ro, adv=torch.zeros(len(ro)))
    view.phase = Phase(("policy",), name="generator")
    params = gen.trainable_parameters()

    def grad_of(loss):
        return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)

    *_, (last, _) = list(alg.losses(view, batch, items))
    g_total = grad_of(last)
    dm, x_s, _, _ = alg.ac_dmd_term(view, mb, ro.schedule.num_steps - 1, pos, cond)
    g_dm = grad_of(dm)
    g_h = grad_of(s2.reward_backprop(alg, view, s2.deterministic_chain(view, mb, pos), mb)[0])
    g_last = grad_of(s2.reward_backprop(alg, view, x_s, mb)[0])
    differs = False
    for a, b, c, d in zip(g_total, g_dm, g_h, g_last):
        if a is None:
            continue
        torch.testing.assert_close(a, 0.3 * b + 2.0 * c, atol=1e-6, rtol=1e-4)
        differs |= not torch.allclose(c, d, atol=1e-6)
    assert differs
    view.phase = None


def test_stage2_dmd_steps_all_puts_the_last_dmd_on_the_chain(tmp_path, stage1_run):
    """``dmd_steps: all``: the last unit's DMD is AC-DMD at σ_s = 0 of the deterministic chain's x̂0 (gradient through
    every step): last unit = 0.3·∇DMD(chain) + 2·∇hinge(chain); its stats say σ_s = 0."""
    from genalign.algorithms import rtdmd_stage2 as s2
    from genalign.algorithms.rtdmd import RTDMD
    from genalign.core.phases import Batch, Phase

    with pytest.raises(ConfigError, match="'algorithm.dmd_steps' is 'some'; valid choices"):
        RTDMD(stage=2, init_from=stage1_run, dmd_steps="some")
    cfg = stage2_config(tmp_path, stage1_run, last_dmd_weight=0.3, bp_weight=2.0, bp_steps="all", dmd_steps="all")
    tr = trainer_for(cfg)
    alg, view, gen = tr.algorithm, tr.view, tr.generator
    ro = tr.do_rollout(0, True)
    items = list(range(len(ro)))
    mb = ro.index(items)
    batch = Batch(0, rollout=ro, adv=torch.zeros(len(ro)))
    view.phase = Phase(("policy",), name="generator")
    params = gen.trainable_parameters()

    def grad_of(loss):
        return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)

    *_, (last, st) = list(alg.losses(view, batch, items))
    assert st["sigma_s"] == 0.0 and st["last_dm_loss"] > 0
    g_total = grad_of(last)
    pos, cond = alg.conditioning(view, mb.prompts)
    chain = s2.deterministic_chain(view, mb, pos)
    dm, _ = alg.ac_dmd_at(view, chain, 0.0, mb.seeds, pos, cond)
    g_dm, g_h = grad_of(dm), grad_of(s2.reward_backprop(alg, view, chain, mb)[0])
    assert float(dm.detach()) == pytest.approx(st["last_dm_loss"], rel=1e-5)
    n = 0
    for a, b, c in zip(g_total, g_dm, g_h):
        if a is not None:
            torch.testing.assert_close(a, 0.3 * b + 2.0 * c, atol=1e-6, rtol=1e-4)
            n += 1
    assert n > 0
    view.phase = None


def test_stage2_anchor_keeps_the_starts_rewarded_samples(tmp_path, stage1_run):
    """``anchor_weight``: a frozen copy of the stage-2 start; mean_n m_n·mse(x̂0_n, a_n) with m_n = [R_w(a_n) >= τ]:
    0 at the start, the hand value once the student moves, and the frozen copy does not move."""
    from genalign.algorithms import rtdmd_stage2 as s2
    from genalign.algorithms.rtdmd import RTDMD

    with pytest.raises(ConfigError, match="'algorithm.anchor_weight' must be >= 0"):
        RTDMD(stage=2, init_from=stage1_run, anchor_weight=-1.0)
    cfg = stage2_config(tmp_path, stage1_run, anchor_weight=1.0, anchor_min_reward=0.5)
    tr = trainer_for(cfg)
    alg, view, gen = tr.algorithm, tr.view, tr.generator
    anchor0 = {k: v.clone() for k, v in alg.anchor.state_dict().items()}
    for k, v in gen.denoiser.state_dict().items():
        assert torch.equal(v, anchor0[k]), k
    assert not any(p.requires_grad for p in alg.anchor.parameters())
    ro = tr.do_rollout(0, True)
    pos, _ = alg.conditioning(view, ro.prompts)
    with torch.no_grad():
        la, st = s2.anchor_loss(alg, view, ro, pos, s2.deterministic_chain(view, ro, pos))
        assert float(la) == 0.0
        for p in gen.trainable_parameters():
            p.add_(0.02 * torch.randn_like(p))
        chain = s2.deterministic_chain(view, ro, pos)
        a = s2.deterministic_chain(view, ro, pos, model=alg.anchor)
        m = (s2.bp_reward(view, a, ro) >= 0.5).float()
        want = sum(float(m[n]) * float(((chain[n] - a[n]) ** 2).mean()) for n in range(len(ro))) / len(ro)
        la, st = s2.anchor_loss(alg, view, ro, pos, chain)
    assert float(la) == pytest.approx(want, rel=1e-5) and float(la) > 0
    assert st["anchor_frac"] == pytest.approx(float(m.mean()))
    tr.train()
    for k, v in alg.anchor.state_dict().items():
        assert torch.equal(v, anchor0[k]), k
    rows = [json.loads(line) for line in open(os.path.join(cfg.run.output_dir, "metrics.jsonl"))]
    assert "anchor_loss" in rows[-1] and rows[-1]["anchor_loss"] >= 0
