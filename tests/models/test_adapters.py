"""Family adapters (sd3, flux, sd, sdxl) on tiny random-weight pipelines saved with save_pretrained and loaded
back through ``Generator.load`` — the code path a hub id takes.

Per family: rollout shapes; the on-policy check (recomputed log-probs give ratio 1 for every step and for mixed
step layouts); deterministic rollout == the stock pipeline's ``__call__`` on the same latents; LoRA saving in
the diffusers layout that ``pipe.load_lora_weights`` reads; ``reference()`` == the base network.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from genalign.config import ModelConfig, SamplerConfig
from genalign.errors import ConfigError
from genalign.models.base import _null_components
from genalign.registry import MODELS
from genalign.testing import tiny

HW = 32
PROMPTS = ["a photo of a cat", "a red car"]
SEEDS = [3, 11]
T = 3

# family -> (builder, builder kwargs, registry name, sampler kernels checked on-policy, guidance scale)
FAMILIES = {
    "sd3": (tiny.build_tiny_sd3, {}, "sd3", ("sde", "cps"), 4.5),
    "flux": (tiny.build_tiny_flux, {}, "flux", ("sde", "eta"), 3.5),
    "sd": (tiny.build_tiny_sd15, {}, "sd", ("ddim",), 5.0),
    "sd_v": (tiny.build_tiny_sd15, {"prediction_type": "v_prediction"}, "sd", ("ddim",), 5.0),
    "sdxl": (tiny.build_tiny_sdxl, {}, "sdxl", ("ddim",), 5.0),
}


def _cfg(name, path, rank=4, alpha=8.0):
    cfg = ModelConfig(family=FAMILIES[name][2], path=path, height=HW, width=HW)
    cfg.lora.rank, cfg.lora.alpha = rank, alpha
    return cfg


def _perturb_lora(gen, seed=0):
    """LoRA B starts at 0 (the adapter is the identity); give it weight so adapter tests mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in gen.named_trainable_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


class Family:
    def __init__(self, name, path):
        self.name, self.path = name, path
        self.cls = MODELS.get(FAMILIES[name][2])
        self.kernels = FAMILIES[name][3]
        self.guidance = FAMILIES[name][4]
        self.gen = self.cls.load(_cfg(name, path))
        if name == "flux":
            self.gen.max_sequence_length = 32  # short T5 sequences keep the CPU test fast (stock default 512)
        _perturb_lora(self.gen)
        self.sampler = {k: SamplerConfig(num_steps=T, guidance_scale=self.guidance, kernel=k, eta=1.0 if k == "ddim"
                                         else 0.3, noise_level=0.7 if k == "sde" else 0.8, cps_logprob="gaussian")
                        for k in self.kernels}
        self._rollouts = {}
        self._probe = None
        self._base_out = None

    def rollout(self, kernel):
        if kernel not in self._rollouts:
            self._rollouts[kernel] = self.gen.rollout(PROMPTS, SEEDS, self.sampler[kernel])
        return self._rollouts[kernel]

    def probe(self):
        """A fixed denoiser input: (x, t, cond) at the second step of the schedule."""
        if self._probe is None:
            g = self.gen
            x = torch.randn(len(PROMPTS), *g.latent_shape(), generator=torch.Generator().manual_seed(7))
            t = g.schedule(T).timesteps[1].expand(len(PROMPTS))
            self._probe = (x, t, g.encode(PROMPTS, self.guidance)["pos"])
        return self._probe

    def base_output(self, fresh_pipe=None):
        """The probe's output from the stock denoiser of a freshly loaded pipeline (no adapter)."""
        if self._base_out is None:
            with torch.no_grad():
                net = getattr(fresh_pipe or _fresh_pipe(self), self.gen.denoiser_name)
                self._base_out = self.gen.model_forward(net, *self.probe()).float()
        return self._base_out


@pytest.fixture(scope="module")
def _families(tmp_path_factory):
    cache = {}

    def get(name):  # each tiny pipeline is built and loaded once per module
        if name not in cache:
            builder, kw = FAMILIES[name][:2]
            cache[name] = Family(name, builder(str(tmp_path_factory.mktemp(f"tiny_{name}")), **kw))
        return cache[name]

    return get


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request, _families):
    return _families(request.param)


@pytest.fixture(scope="module", params=["sd3", "flux", "sd", "sdxl"])
def lora_fam(request, _families):
    """The adapter-mechanics tests need one SD-1.x variant only (v-prediction changes nothing there)."""
    return _families(request.param)


def test_registry_names():
    assert MODELS.get("flux").__name__ == "FluxGenerator"
    assert MODELS.get("sd").__name__ == "SDGenerator"
    assert MODELS.get("sdxl").__name__ == "SDXLGenerator"
    assert MODELS.get("sd3").__name__ == "SD3Generator"


def test_rollout_shapes(fam):
    g = fam.gen
    ro = fam.rollout(fam.kernels[0])
    n = len(PROMPTS)
    assert ro.states.shape == (n, T + 1, *g.latent_shape())
    assert ro.log_probs.shape == (n, T)
    assert ro.samples.shape == (n, 3, HW, HW)
    assert float(ro.samples.min()) >= 0 and float(ro.samples.max()) <= 1
    assert torch.isfinite(ro.states).all()
    sch = ro.schedule
    assert sch.num_steps == T
    if g.kind == "flow":
        assert sch.sigmas.shape == (T + 1,) and float(sch.sigmas[0]) == pytest.approx(1.0) and sch.sigmas[-1] == 0
        assert torch.all(sch.sigmas[1:] < sch.sigmas[:-1])
    else:
        assert sch.alphas.shape == (T + 1,) and torch.all(sch.alphas[1:] > sch.alphas[:-1])
    # every step of a stochastic sde/ddim rollout has a log-prob
    assert torch.isfinite(ro.log_probs).all()
    assert ro.train_steps.tolist() == [list(range(T))] * n
    # per-sample randomness: the same seed alone reproduces sample 1 of the batch (up to batch-size-dependent
    # float32 kernel rounding)
    ro1 = g.rollout(PROMPTS[1:], SEEDS[1:], fam.sampler[fam.kernels[0]], decode=False)
    torch.testing.assert_close(ro1.states[0], ro.states[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(ro1.log_probs[0], ro.log_probs[1], atol=1e-4, rtol=0)
    assert float((ro.states[0, -1] - ro.states[1, -1]).abs().max()) > 0.1  # different seeds, different samples


def test_on_policy_ratio_is_one(fam):
    """θ = θ_old: recomputed log π(x_{j+1}|x_j) equals the stored one for every step and step layout."""
    g = fam.gen
    n = len(PROMPTS)
    for kernel in fam.kernels:
        scfg = fam.sampler[kernel]
        ro = fam.rollout(kernel)
        valid = [j for j in range(T) if not torch.isnan(ro.log_probs[0, j])]
        layouts = [torch.full((n,), j) for j in valid]
        layouts += [torch.tensor([valid[0], valid[-1]]), torch.tensor([valid[-1], valid[0]])]
        for idx in layouts:
            with torch.no_grad():
                lp, mean, std = g.step_log_prob(g.denoiser, ro, idx, scfg)
            stored = ro.log_probs[torch.arange(n), idx]
            ratio = torch.exp(lp.cpu() - stored)
            assert torch.all((ratio - 1).abs() <= 1e-5), (fam.name, kernel, idx.tolist(), ratio)
            assert mean.shape == (n, *g.latent_shape()) and torch.all(std > 0)
    if g.kind == "flow" and "cps" in fam.kernels:  # CPS: last step deterministic, no log-prob
        ro = fam.rollout("cps")
        assert torch.isnan(ro.log_probs[:, -1]).all() and torch.isfinite(ro.log_probs[:, :-1]).all()


def test_deterministic_rollout_matches_stock_pipeline(fam):
    g = fam.gen
    scfg = fam.sampler[fam.kernels[0]]
    ro = g.rollout(PROMPTS, SEEDS, scfg, stochastic=False)
    assert torch.isnan(ro.log_probs).all()
    stock = g.stock_call(PROMPTS, SEEDS, T, fam.guidance).float()
    assert stock.shape == ro.samples.shape
    assert float((stock - ro.samples).abs().max()) <= 1e-5
    assert float(stock.std()) > 1e-3  # not a degenerate (constant) image


def _fresh_pipe(fam):
    cfg = _cfg(fam.name, fam.path)
    cls = fam.cls.pipe_class()
    kw = {"use_safetensors": True, **_null_components(cls, cfg), **fam.cls.extra_load_kwargs(cfg)}
    return cls.from_pretrained(fam.path, **kw)


def test_lora_trainable_save_and_diffusers_load(lora_fam, tmp_path):
    fam = lora_fam
    g = fam.gen
    named = g.named_trainable_parameters()
    assert named and all(".lora_A." in n or ".lora_B." in n for n, _ in named)
    for comp_name, comp in g.pipe.components.items():  # nothing else in the pipeline trains
        if isinstance(comp, torch.nn.Module):
            extra = [n for n, p in comp.named_parameters() if p.requires_grad and "lora_" not in n]
            assert not extra, (comp_name, extra[:3])
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in named}
    assert {"to_q", "to_k", "to_v"} <= targets
    # every default LoRA module feeds the output: each trainable tensor receives a gradient
    x, t, cond = fam.probe()
    g.denoiser.zero_grad(set_to_none=True)
    g.model_forward(g.denoiser, x, t, cond).float().square().mean().backward()
    no_grad = [n for n, p in named if p.grad is None or float(p.grad.abs().max()) == 0]
    g.denoiser.zero_grad(set_to_none=True)
    assert not no_grad, no_grad[:4]

    out_dir = str(tmp_path / "lora")
    g.save_lora(out_dir)
    assert os.path.isfile(os.path.join(out_dir, "pytorch_lora_weights.safetensors"))

    with torch.no_grad():
        adapted = g.model_forward(g.denoiser, x, t, cond).float()
        fresh = _fresh_pipe(fam)
        base = fam.base_output(fresh)
        fresh.load_lora_weights(out_dir)
        loaded = g.model_forward(getattr(fresh, g.denoiser_name), x, t, cond).float()
    assert float((adapted - base).abs().max()) > 1e-3  # the perturbed adapter changes the output
    torch.testing.assert_close(loaded, adapted, atol=1e-5, rtol=1e-5)


def test_reference_disables_adapter(lora_fam):
    fam = lora_fam
    g = fam.gen
    x, t, cond = fam.probe()
    with torch.no_grad():
        base = fam.base_output()
        adapted = g.model_forward(g.denoiser, x, t, cond).float()
        with g.reference() as ref:
            ref_out = g.model_forward(ref, x, t, cond).float()
        again = g.model_forward(g.denoiser, x, t, cond).float()
    torch.testing.assert_close(ref_out, base, atol=1e-6, rtol=0)
    assert float((adapted - base).abs().max()) > 1e-3
    torch.testing.assert_close(again, adapted, atol=0, rtol=0)  # adapter re-enabled after the context


# ------------------------------------------------------------------------------------------------- family details
def test_flux_details(_families):
    from genalign.models.flux import FluxGenerator

    fam = _families("flux")
    g, path = fam.gen, fam.path
    assert isinstance(g, FluxGenerator)
    # packed latents: (H/2·W/2 patches of the 16×16 latent grid, 4·C channels)
    assert g.latent_shape() == ((16 // 2) * (16 // 2), 4 * 4)
    x = torch.randn(2, *g.latent_shape())
    unpacked = g.unpack(x)
    assert unpacked.shape == (2, 4, 16, 16)
    torch.testing.assert_close(g.pipe._pack_latents(unpacked, 2, 4, 16, 16), x, atol=0, rtol=0)
    # embedded guidance: no CFG pass, but the guidance value reaches the transformer
    assert not g.uses_cfg(3.5) and "neg" not in g.encode(PROMPTS, 3.5)
    c1, c2 = g.encode(PROMPTS, 1.0)["pos"], g.encode(PROMPTS, 5.0)["pos"]
    assert c2["guidance"].tolist() == [5.0, 5.0]
    t = torch.full((2,), 500.0)
    with torch.no_grad():
        o1, o2 = g.model_forward(g.denoiser, x, t, c1), g.model_forward(g.denoiser, x, t, c2)
    assert float((o1 - o2).abs().max()) > 1e-4
    with torch.no_grad():  # predict() follows its guidance_scale argument whatever encode() was given
        torch.testing.assert_close(g.predict(g.denoiser, x, t, {"pos": c1}, 5.0), o2.float(), atol=0, rtol=0)
    # schedule: stock dynamic shift exp(μ)/(exp(μ)+1/s−1), μ = linear in seq len (FLUX calculate_shift)
    T4 = 4
    s = np.linspace(1.0, 1 / T4, T4)
    m = (1.15 - 0.5) / (4096 - 256)
    mu = 64 * m + (0.5 - m * 256)
    expect = np.exp(mu) / (np.exp(mu) + (1 / s - 1))
    sch = g.schedule(T4)
    np.testing.assert_allclose(sch.sigmas.numpy(), np.append(expect, 0.0), atol=1e-6)
    np.testing.assert_allclose(sch.timesteps.numpy(), 1000 * expect, rtol=1e-6)
    # a sampler.shift override = static shift sσ/(1+(s−1)σ) of the same sigmas (DanceGRPO, s = 3)
    sch3 = g.schedule(T4, shift=3.0)
    np.testing.assert_allclose(sch3.sigmas.numpy(), np.append(3 * s / (1 + 2 * s), 0.0), atol=1e-6)
    with pytest.raises(ConfigError, match="divisible by 4"):
        FluxGenerator(g.pipe, ModelConfig(family="flux", path=path, height=30, width=32))


def test_sd_schedule_and_errors(_families):
    from genalign.models.sd import SDGenerator

    fam = _families("sd")
    g, path = fam.gen, fam.path
    assert isinstance(g, SDGenerator) and g.prediction_type == "epsilon"
    assert _families("sd_v").gen.prediction_type == "v_prediction"
    # ᾱ of the scaled-linear schedule, computed here independently
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    sch = g.schedule(4)
    assert sch.timesteps.tolist() == [751.0, 501.0, 251.0, 1.0]  # "leading" spacing, steps_offset 1
    np.testing.assert_allclose(sch.alphas.numpy(), [abar[751], abar[501], abar[251], abar[1], abar[0]], rtol=1e-5)
    assert g.latent_shape() == (4, 16, 16)
    with pytest.raises(ConfigError, match="valid choices: ddim, ode"):
        g.rollout(PROMPTS[:1], [0], SamplerConfig(num_steps=2, kernel="sde"), decode=False)
    with pytest.raises(ConfigError, match="sampler.shift"):
        g.schedule(4, shift=3.0)
    with pytest.raises(ConfigError, match="divisible by 2"):
        SDGenerator(g.pipe, ModelConfig(family="sd", path=path, height=31, width=32))
    # DDIM η=1 rollout: the stochastic step's std is DDIM's σ_t of Song et al. Eq. 16 at η = 1
    scfg = SamplerConfig(num_steps=4, guidance_scale=1.0, kernel="ddim", eta=1.0)
    ro = g.rollout(PROMPTS[:1], [0], scfg, decode=False)
    _, _, std = g.step_log_prob(g.denoiser, ro, torch.tensor([1]), scfg)
    a_t, a_p = abar[501], abar[251]
    assert float(std) == pytest.approx(np.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)), rel=1e-4)


@pytest.mark.parametrize("spacing,one,expect_t", [("trailing", False, [999, 749, 499, 249]),
                                                   ("leading", True, [751, 501, 251, 1])])
def test_ddim_schedule_spacings(spacing, one, expect_t, caplog):
    from diffusers import DDIMScheduler

    from genalign.models.sd import ddim_schedule

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=one, steps_offset=1, timestep_spacing=spacing)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    with caplog.at_level("WARNING"):
        sch = ddim_schedule(sched, 4)
    assert sch.timesteps.tolist() == expect_t
    final = 1.0 if one else abar[0]  # DDIM's final_alpha_cumprod (t − 1000/T < 0 after the last step)
    np.testing.assert_allclose(sch.alphas.numpy(), [*abar[expect_t], final], rtol=1e-5)
    assert "not uniform" not in caplog.text
    with caplog.at_level("WARNING"):
        ddim_schedule(DDIMScheduler.from_config(sched.config, timestep_spacing="linspace"), 4)
    assert "not uniform" in caplog.text  # linspace: DDIM's t−1000/T rule misses t_{i+1}; we say so
