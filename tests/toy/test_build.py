"""The asset builder is deterministic given its seed (a very short build, twice)."""

import os

import torch
from safetensors.torch import load_file

from genalign.toy.build import BuildConfig, build_assets


def _tensors(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".safetensors"):
                for k, v in load_file(os.path.join(d, f)).items():
                    out[os.path.relpath(os.path.join(d, f), root) + ":" + k] = v
    return out


def _tiny(seed, stop_at):
    # stop checks after every step with 1 image per eval prompt and 2 sampling steps
    return BuildConfig(seed=seed, threads=1, classifier_steps=2, vae_steps=2, flow_steps=2, eps_steps=2,
                       batch_size=8, max_null_tokens=4, evaluate=False, stop_every=1, stop_at=stop_at,
                       stop_min_digit=0.0, stop_images=1, flow_steps_sample=2, eps_steps_sample=2)


def test_build_is_deterministic_given_seed(tmp_path):
    logs = []
    m1 = build_assets(str(tmp_path / "a"), _tiny(0, 2.0), log=logs.append)  # never reaches 2.0: all steps
    m2 = build_assets(str(tmp_path / "b"), _tiny(0, 2.0), log=logs.append)
    m3 = build_assets(str(tmp_path / "c"), _tiny(1, 1e-9), log=logs.append)  # stops at the first check
    assert m1["early_stopping"]["flow_stopped_at_step"] == 2 and len(m1["early_stopping"]["curves"]["eps"]) == 2
    assert m1["early_stopping"]["curves"] == m2["early_stopping"]["curves"]
    assert m3["early_stopping"]["flow_stopped_at_step"] == 1 and m3["early_stopping"]["eps_stopped_at_step"] == 1
    a, b, c = _tensors(tmp_path / "a"), _tensors(tmp_path / "b"), _tensors(tmp_path / "c")
    assert set(a) == set(b) and len(a) > 50
    assert any(k.startswith("digits_flow/transformer") for k in a) and any(k.startswith("digits_eps/unet") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    trained = [k for k in a if k.startswith(("digits_flow/transformer", "digits_eps/unet", "classifier"))]
    assert any(not torch.equal(a[k], c[k]) for k in trained)
    assert m1["seed"] == 0 and m1["config"]["flow_steps"] == 2
    assert sorted(os.listdir(tmp_path / "a")) == ["classifier", "digits_eps", "digits_flow", "manifest.json", "prompts"]
    # what was built loads through the real path
    from genalign.toy.assets import load_eps_pipeline, load_flow_pipeline

    assert type(load_flow_pipeline(str(tmp_path / "a" / "digits_flow"))).__name__ == "StableDiffusion3Pipeline"
    assert type(load_eps_pipeline(str(tmp_path / "a" / "digits_eps"))).__name__ == "StableDiffusionPipeline"


def test_stop_rule_needs_the_mean_and_every_digit(monkeypatch):
    """Early stopping fires only once the mean reaches stop_at AND the worst digit reaches stop_min_digit."""
    import types

    from genalign.toy import build as B

    results = iter([
        {"correctness_mean": 0.9, "correctness_per_digit": [1.0] * 9 + [0.1]},  # mean high, one digit never drawn
        {"correctness_mean": 0.5, "correctness_per_digit": [0.5] * 10},          # balanced but too weak
        {"correctness_mean": 0.62, "correctness_per_digit": [0.7] * 9 + [0.3]},  # both met
    ])
    monkeypatch.setattr(B, "evaluate_pipeline", lambda *a, **k: next(results))
    net = types.SimpleNamespace(eval=lambda: None, train=lambda: None)
    pipe = types.SimpleNamespace(unet=net)
    curve = []
    check = B._stopper("eps", None, BuildConfig(stop_every=10, stop_at=0.6, stop_min_digit=0.25), lambda s: None,
                       curve)
    assert check(5, pipe, None, None) is False and curve == []  # not a check step
    assert [check(s, pipe, None, None) for s in (10, 20, 30)] == [False, False, True]
    assert curve == [[10, 0.9, 0.1], [20, 0.5, 0.5], [30, 0.62, 0.3]]


def test_null_token_bias_equals_k_zero_tokens():
    """Training simulates k all-zero "T5" tokens by one zero token with a +log k attention bias: exact."""
    import math

    from diffusers import SD3Transformer2DModel

    from genalign.toy.build import _NullTokenBias

    torch.manual_seed(0)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=8, caption_projection_dim=16,
                               pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8).eval()
    x, ctx, pooled = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8), torch.randn(2, 8)
    t = torch.tensor([300.0, 700.0])
    with torch.no_grad():
        for k in (1, 7, 40):
            ref = tr(hidden_states=x, encoder_hidden_states=torch.cat([ctx, torch.zeros(2, k, 8)], 1),
                     pooled_projections=pooled, timestep=t).sample
            procs = tr.attn_processors
            nb = _NullTokenBias()
            nb.log_k = math.log(k)
            tr.set_attn_processor(nb)
            out = tr(hidden_states=x, encoder_hidden_states=torch.cat([ctx, torch.zeros(2, 1, 8)], 1),
                     pooled_projections=pooled, timestep=t).sample
            tr.set_attn_processor(procs)
            assert torch.allclose(out, ref, atol=1e-5), k
        # and it matters: without the bias, 40 zero tokens differ from one
        one = tr(hidden_states=x, encoder_hidden_states=torch.cat([ctx, torch.zeros(2, 1, 8)], 1),
                 pooled_projections=pooled, timestep=t).sample
        assert not torch.allclose(one, ref, atol=1e-4)
