"""The adversarial reward's prompt-conditioned head (``head: projection``, arXiv 1802.05637 eq. 3): the head, the
hinge loss and the reward pinned by hand; the labels reach training; conditioning learns what a plain head cannot."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from genalign.core.phases import Batch
from genalign.errors import ConfigError, GenalignError
from genalign.rewards.adversarial import AdversarialReward, DiscriminatorHead, ProjectionHead
from genalign.rewards.base import build_reward
from genalign.rewards.encoders import encode_png

from tests.rewards.test_adversarial import THICK, FakeView, PixelTokens, gelu, pack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Pixel2(PixelTokens):
    """PixelTokens of width 2 whatever the image width (the head's width comes from a probe image)."""

    def tokens(self, images):
        return images[:, 0, 0, :2].float(), images[:, 1, :, :2].float()


def per_prompt_refs(tmp_path, sets):
    """A .jsonl of {prompt, references} with one PNG per token image: sets = {prompt: (cls (n, D), patches)}."""
    lines = []
    for j, (prompt, (cls, patches)) in enumerate(sets.items()):
        names = []
        for i, im in enumerate(pack(cls, patches)):
            name = f"p{j}_{i}.png"
            (tmp_path / name).write_bytes(encode_png(im))
            names.append(name)
        lines.append(json.dumps({"prompt": prompt, "references": names}))
    path = tmp_path / "refs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def hand_projection(reward, e):
    """D(x, y) = 2·gelu(x₀) − 0.5 + e_y·gelu(x₀) (hidden = 1)."""
    head = reward.parts()["discriminator"].module
    assert isinstance(head, ProjectionHead)
    with torch.no_grad():
        head.net[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.net[0].bias.zero_()
        head.net[2].weight.copy_(torch.tensor([[2.0]]))
        head.net[2].bias.fill_(-0.5)
        head.embed.weight.copy_(torch.tensor(e).view(-1, 1))
    return head


def test_projection_head_by_hand_starts_as_the_plain_head():
    head = ProjectionHead(2, 3, 4)
    plain = DiscriminatorHead(2, 3)
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if k.startswith("net.")})
    x = torch.randn(5, 2)
    y = torch.tensor([0, 1, 2, 3, 1])
    assert torch.equal(head.embed.weight, torch.zeros(4, 3))  # e = 0: D(x, y) = ψ(φ(x)) at the start
    assert torch.allclose(head(x, y), plain(x), atol=1e-7)
    with torch.no_grad():
        head.embed.weight.copy_(torch.arange(12.0).view(4, 3))
    phi = torch.nn.functional.gelu(head.net[0](x))
    want = plain(x) + (head.embed.weight[y] * phi).sum(-1)
    assert torch.allclose(head(x, y), want, atol=1e-6)


def test_projection_loss_and_reward_by_hand(tmp_path):
    """Prompt 'A' (class 0, e = 0) and 'B' (class 1, e = 1.5): the same tokens score differently per prompt."""
    ref_c, ref_p = torch.tensor([[0.6, 0.2]]), torch.tensor([[[1.0, 0.0]] * 4])
    refs = per_prompt_refs(tmp_path, {"A": (ref_c, ref_p), "B": (ref_c, ref_p)})
    r = AdversarialReward(encoder=Pixel2(), reference=refs, hidden=1, num_patches=3, feature_norm="raw",
                          head="projection")
    assert r.classes == {"A": 0, "B": 1}
    head = hand_projection(r, [0.0, 1.5])
    D = lambda v, e: 2 * gelu(v) - 0.5 + e * gelu(v)  # noqa: E731
    gen_c, gen_p = torch.tensor([[0.0, 1.0], [0.2, 0.0]]), torch.tensor([[[-1.0, 0.0]] * 4, [[0.5, 0.0]] * 4])
    # sample 0 prompted 'A', sample 1 'B'; one reference each, carrying its sample's prompt
    ref_cs, ref_ps = torch.tensor([[3.0, 0.0], [0.4, 0.0]]), torch.tensor([[[1.0, 0.0]] * 4, [[0.0, 0.0]] * 4])
    y = r.labels(["A", "B"])
    g = torch.Generator().manual_seed(0)
    loss, st = r.discriminator_loss(head, ref_cs, ref_ps, gen_c, gen_p, g, g, None, y, y)
    h = lambda v: max(0.0, v)  # noqa: E731
    cls = 0.5 * ((h(1 - D(3.0, 0)) + h(1 - D(0.4, 1.5))) / 2 + (h(1 + D(0.0, 0)) + h(1 + D(0.2, 1.5))) / 2)
    patch = 0.5 * ((h(1 - D(1.0, 0)) + h(1 - D(0.0, 1.5))) / 2 + (h(1 + D(-1.0, 0)) + h(1 + D(0.5, 1.5))) / 2)
    assert loss.item() == pytest.approx(cls + 0.3 * patch, abs=1e-5)
    # the reward: 0.7·D(c, y) + 0.3·mean D(p, y), every patch equal
    x = pack(torch.tensor([[0.8, 0.0]] * 2), torch.tensor([[[0.3, 0.0]] * 4] * 2))
    got = r(x, ["A", "B"])
    assert got.tolist() == pytest.approx([0.7 * D(0.8, 0) + 0.3 * D(0.3, 0), 0.7 * D(0.8, 1.5) + 0.3 * D(0.3, 1.5)],
                                         abs=1e-5)
    with pytest.raises(GenalignError, match="prompt 'C' has no reference set") as e:
        r(x[:1], ["C"])
    assert "\n" not in str(e.value)


def test_projection_learns_which_prompt_a_sample_belongs_to(tmp_path):
    """References of 'A' are type a, of 'B' type b; the generations are swapped (A's look like b, B's like a).
    Pooled, each type is as often positive as negative, so the plain head cannot tell them apart; the projection
    head learns that type a is right for 'A' and wrong for 'B'."""
    a_c, b_c = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    a_p, b_p = torch.tensor([[[1.0, 0.0]] * 4]), torch.tensor([[[0.0, 1.0]] * 4])
    refs = per_prompt_refs(tmp_path, {"A": (a_c, a_p), "B": (b_c, b_p)})
    prompts = ["A", "B"] * 4
    gens = pack(torch.cat([b_c, a_c] * 4), torch.cat([b_p, a_p] * 4))
    gaps = {}
    for kind in ("mlp", "projection"):
        r = AdversarialReward(encoder=Pixel2(), reference=refs, hidden=8, num_patches=2, feature_norm="raw",
                              head=kind, lr=3e-2, seed=1)
        head = r.parts()["discriminator"].module
        opt = torch.optim.Adam(head.parameters(), lr=3e-2, betas=(0.5, 0.999))
        ro = SimpleNamespace(samples=gens, prompts=prompts, metadata=[{}] * 8, seeds=list(range(8)))
        for it in range(60):
            (loss, st), = r.losses(FakeView(head, it), Batch(iteration=it, rollout=ro), list(range(8)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        a_img, b_img = pack(a_c, a_p), pack(b_c, b_p)
        gaps[kind] = float(r(a_img, ["A"]) - r(a_img, ["B"])) + float(r(b_img, ["B"]) - r(b_img, ["A"]))
        if kind == "projection":
            assert st["disc/acc"] == 1.0
    assert gaps["mlp"] == 0.0  # no prompt input: the same score under either prompt
    assert gaps["projection"] > 2.0


def test_projection_options_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_reward("adversarial", {"encoder": "digits", "reference": THICK, "head": "conv"})
    assert "head is 'conv'; valid choices: mlp, projection" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="head 'projection' needs per-prompt references") as e:
        build_reward("adversarial", {"encoder": "digits", "reference": THICK, "head": "projection"})
    assert "\n" not in str(e.value)


def test_toy_per_prompt_reference_file_matches_the_digits():
    """assets/toy/exemplars/thick_digits_by_prompt.jsonl: every thick reference once, under its own digit's prompt
    (the toy classifier agrees with the label on most of them)."""
    from genalign.rewards.token_encoders import References
    from genalign.toy.data import make_prompt

    per = References(os.path.join(REPO, "assets/toy/exemplars/thick_digits_by_prompt.jsonl"))
    assert list(per.by_prompt) == [make_prompt(d) for d in range(10)]
    files = sorted(f for v in per.by_prompt.values() for f in v)
    assert files == sorted(os.path.join(THICK, f) for f in os.listdir(THICK)) and per.size == 117
    r = build_reward("digit_correctness")
    for prompt, pool in per.by_prompt.items():
        p = r(per.images_of(pool), [prompt] * len(pool))
        assert float(p.mean()) > 0.5, prompt


def test_ref_pool_all_draws_every_prompts_references_with_their_own_labels(tmp_path):
    a_c, b_c = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    a_p, b_p = torch.tensor([[[1.0, 0.0]] * 4]), torch.tensor([[[0.0, 1.0]] * 4])
    refs = per_prompt_refs(tmp_path, {"A": (a_c, a_p), "B": (b_c, b_p)})
    kw = dict(encoder=Pixel2(), reference=refs, hidden=4, num_patches=2, feature_norm="raw", head="projection",
              refs_per_sample=6)
    own = AdversarialReward(**kw)
    keys, ref_y, gen_y = own._pick_refs(torch.Generator().manual_seed(0), ["A", "A"])
    assert all(k.endswith("p0_0.png") for k in keys) and ref_y.tolist() == [0] * 12 and gen_y.tolist() == [0, 0]
    pooled = AdversarialReward(**kw, ref_pool="all")
    keys, ref_y, gen_y = pooled._pick_refs([torch.Generator().manual_seed(i) for i in range(2)], ["A", "A"])
    assert gen_y.tolist() == [0, 0] and len(keys) == 12
    # two references, each sample's 6 draws are 3 permutations of both: every reference carries its own prompt
    assert sorted(os.path.basename(k) for k in keys) == ["p0_0.png"] * 6 + ["p1_0.png"] * 6
    assert ref_y.tolist() == [0 if k.endswith("p0_0.png") else 1 for k in keys]
    c, _ = pooled.references.tokens_of(keys)  # the tokens agree with the labels
    assert torch.equal(c[:, 1] == 1, ref_y == 1)
    with pytest.raises(ConfigError, match="ref_pool 'all' needs per-prompt references") as e:
        build_reward("adversarial", {"encoder": "digits", "reference": THICK, "ref_pool": "all"})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="ref_pool is 'x'; valid choices: prompt, all"):
        build_reward("adversarial", {"encoder": "digits", "reference": THICK, "ref_pool": "x"})


def test_toy_recipes_projection_and_early_stop_build(monkeypatch):
    from genalign.config import load_config
    from genalign.rewards.base import build_rewards
    from genalign.toy.data import make_prompt

    monkeypatch.chdir(REPO)
    only = load_config("configs/toy/adv_grpo_only.yaml")
    assert only.train.save_every == 5 and only.algorithm.args["beta"] == 1.0 and len(only.rewards) == 1
    proj = load_config("configs/toy/adv_grpo_projection.yaml")
    adv, = build_rewards(proj.rewards)
    assert isinstance(adv.parts()["discriminator"].module, ProjectionHead)
    assert adv.classes == {make_prompt(d): d for d in range(10)} and len(adv._pool) == 117
    s = adv(torch.rand(2, 3, 16, 16), [make_prompt(3), make_prompt(7)])
    assert torch.isfinite(s).all()
