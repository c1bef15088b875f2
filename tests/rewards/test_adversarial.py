"""Adv-GRPO's adversarial reward (METHODS.md §7): losses and reward pinned by hand, schedules, references, state."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from genalign.core.phases import Batch, PartSpec
from genalign.core.seeding import derive_seed
from genalign.errors import ConfigError, GenalignError
from genalign.rewards.adversarial import (AdversarialReward, DiscriminatorHead, combine_scores, hinge_loss,
                                          sample_patches)
from genalign.rewards.base import build_reward
from genalign.rewards.encoders import encode_png
from genalign.rewards.token_encoders import DigitTokens, References, build_token_encoder, save_reference_tokens

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THICK = os.path.join(REPO, "assets", "toy", "exemplars", "thick_digits")


class PixelTokens:
    """A constructed encoder: an "image" (3, P, D) carries its tokens: cls = x[0, 0], patches = x[1]."""

    id = "pixel-tokens"

    def tokens(self, images):
        return images[:, 0, 0].float(), images[:, 1].float()

    def to(self, device):
        return self


def pack(cls, patches):
    """Images for PixelTokens from cls (N, D) and patches (N, P, D)."""
    n, p, d = patches.shape
    x = torch.zeros(n, 3, p, d)
    x[:, 0, 0] = cls
    x[:, 1] = patches
    return x


def gelu(v):
    return v * 0.5 * (1 + math.erf(v / math.sqrt(2)))


def token_file(tmp_path, cls, patches=None, name="refs.safetensors"):
    from safetensors.torch import save_file

    t = {"cls": cls.contiguous()}
    if patches is not None:
        t["patches"] = patches.contiguous()
    path = str(tmp_path / name)
    save_file(t, path)
    return path


class FakeView:
    def __init__(self, head, iteration=0, seed=0):
        self.head, self.iteration, self.run_seed = head, iteration, seed
        self.device, self.rank, self.world = torch.device("cpu"), 0, 1

    def module(self, part):
        assert part == "discriminator"
        return self.head

    def seed(self, *parts):
        return derive_seed(self.run_seed, self.iteration, *parts)

    def all_reduce(self, t, op="sum"):
        return t


def set_hand_head(reward):
    """D(x) = 2·gelu(x_0) − 0.5 (hidden = 1)."""
    head = reward.parts()["discriminator"].module
    with torch.no_grad():
        head.net[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.net[0].bias.zero_()
        head.net[2].weight.copy_(torch.tensor([[2.0]]))
        head.net[2].bias.fill_(-0.5)
    return head


# ------------------------------------------------------------------------------------------ maths by hand


def test_hinge_loss_and_combine_by_hand():
    loss = hinge_loss(torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 0.2]),
                      torch.tensor([[0.0, 1.5]]), torch.tensor([[-2.0, -0.8]]), patch_weight=0.3)
    # cls: ½[(0.5 + 0)/2 + (0.5 + 1.2)/2] = 0.55; patches: 0.3·½[(1 + 0)/2 + (0 + 0.2)/2] = 0.09
    assert loss.item() == pytest.approx(0.64, abs=1e-6)
    assert hinge_loss(torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 0.2])).item() == pytest.approx(0.55, abs=1e-6)
    r = combine_scores(torch.tensor([1.0, -2.0]), torch.tensor([[0.0, 2.0], [1.0, 1.0]]), 0.7)
    assert r.tolist() == pytest.approx([0.7 + 0.3, -1.4 + 0.3], abs=1e-6)


REF_C, REF_P = torch.tensor([[3.0, 4.0]]), torch.tensor([[[1.0, 0.0]] * 4])
GEN_C, GEN_P = torch.tensor([[0.0, -2.0]]), torch.tensor([[[-1.0, 0.0]] * 4])


@pytest.mark.parametrize("norm", ["reference", "normalized", "raw"])
def test_discriminator_loss_and_reward_on_constructed_features(tmp_path, norm):
    """A hand-set head D(x) = 2·gelu(x₀) − 0.5; every image's patch tokens are equal, so the draw cannot matter."""
    refs = token_file(tmp_path, REF_C, REF_P)
    r = AdversarialReward(encoder=PixelTokens(), reference=refs, hidden=1, num_patches=3, feature_norm=norm)
    head = set_hand_head(r)
    D = lambda v: 2 * gelu(v) - 0.5  # noqa: E731
    k = 5 / (5 + 1e-6)  # ‖(3, 4)‖ = 5; x / (‖x‖ + 1e-6)
    train_norm, reward_norm = norm == "normalized", norm != "raw"
    d_rc, d_gc = (D(0.6 * k), D(0.0)) if train_norm else (D(3.0), D(0.0))
    d_rp, d_gp = (D(1 / (1 + 1e-6)), D(-1 / (1 + 1e-6))) if train_norm else (D(1.0), D(-1.0))
    want = 0.5 * (max(0, 1 - d_rc) + max(0, 1 + d_gc)) + 0.3 * 0.5 * (max(0, 1 - d_rp) + max(0, 1 + d_gp))
    g = torch.Generator().manual_seed(0)
    loss, st = r.discriminator_loss(head, REF_C, REF_P, GEN_C, GEN_P, g, g)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert st["disc/acc_ref"] == 1.0 and st["disc/acc_gen"] == 1.0
    # the reward on the references' own tokens
    rc = D(0.6 * k) if reward_norm else D(3.0)
    rp = D(1 / (1 + 1e-6)) if reward_norm else D(1.0)
    got = r(pack(REF_C, REF_P), ["p"])
    assert got.item() == pytest.approx(0.7 * rc + 0.3 * rp, abs=1e-5)
    if norm == "reference":  # the quirk: trained on raw tokens (D(3) ≈ 5.49) but rewarded on normalised ones
        assert got.item() < 0.7 * D(3.0)


# ------------------------------------------------------------------------------------------ randomness


def test_patch_subset_reproducible_from_seed_and_drawn_per_image():
    patches = torch.randn(3, 10, 4)
    a = sample_patches(patches, 64, torch.Generator().manual_seed(7))
    b = sample_patches(patches, 64, torch.Generator().manual_seed(7))
    c = sample_patches(patches, 64, torch.Generator().manual_seed(8))
    assert a.shape == (3, 10, 4)  # min(n, P), with replacement
    assert torch.equal(a, b) and not torch.equal(a, c)
    small = sample_patches(patches, 5, torch.Generator().manual_seed(1))
    assert small.shape == (3, 5, 4)
    rows = [set(map(tuple, small[i].tolist())) for i in range(3)]
    assert all(rw <= set(map(tuple, patches[i].tolist())) for i, rw in enumerate(rows))


def test_content_seed_ignores_last_bit_noise_and_tells_images_apart():
    from genalign.rewards.adversarial import content_seed

    torch.manual_seed(0)
    imgs = torch.rand(32, 3, 16, 16)
    seeds = [content_seed(x) for x in imgs]
    assert len(set(seeds)) == 32  # different images, different draws
    for eps in (1e-7, 1e-6, 1e-5):  # the last bits (a batch of another size on another CPU) change no seed
        noisy = imgs + eps * torch.randn_like(imgs)
        assert [content_seed(x) for x in noisy] == seeds
    assert content_seed(imgs[0].double()) == seeds[0] and content_seed(imgs[0][None]) == seeds[0]
    assert content_seed(imgs[0] + 0.2) != seeds[0]


def test_scoring_reproducible_from_seed_and_iteration(tmp_path):
    torch.manual_seed(0)
    refs = token_file(tmp_path, torch.randn(6, 8), torch.randn(6, 12, 8))
    x = pack(torch.randn(4, 8), torch.randn(4, 12, 8))
    r1 = AdversarialReward(encoder=PixelTokens(), reference=refs, num_patches=3, hidden=16)
    r2 = AdversarialReward(encoder=PixelTokens(), reference=refs, num_patches=3, hidden=16)
    s1 = r1(x, ["p"] * 4)
    assert torch.equal(s1, r2(x, ["p"] * 4)) and torch.equal(s1, r1(x, ["p"] * 4))
    flipped = r1(x.flip(0), ["p"] * 4)  # a score depends on its image, not on its place in the batch
    assert torch.equal(flipped, s1.flip(0))
    r2.phases(1)  # a new iteration draws new patches
    assert not torch.equal(s1, r2(x, ["p"] * 4))
    r3 = AdversarialReward(encoder=PixelTokens(), reference=refs, num_patches=3, hidden=16, seed=1)
    assert not torch.equal(s1, r3(x, ["p"] * 4))


def test_scoring_is_gradient_free(tmp_path):
    refs = token_file(tmp_path, torch.randn(4, 8), torch.randn(4, 6, 8))
    r = AdversarialReward(encoder=PixelTokens(), reference=refs, hidden=8)
    x = pack(torch.randn(3, 8), torch.randn(3, 6, 8)).requires_grad_(True)
    with torch.enable_grad():
        s = r(x, ["p"] * 3)
    assert not s.requires_grad and x.grad is None
    assert all(p.grad is None for p in r.head.parameters())


# ------------------------------------------------------------------------------------------ training


def separable(n, seed):
    g = torch.Generator().manual_seed(seed)
    ref_c, ref_p = torch.randn(n, 8, generator=g) + 2.0, torch.randn(n, 6, 8, generator=g) + 2.0
    gen_c, gen_p = torch.randn(n, 8, generator=g) - 2.0, torch.randn(n, 6, 8, generator=g) - 2.0
    return (ref_c, ref_p), (gen_c, gen_p)


def test_losses_decrease_with_a_few_adam_steps(tmp_path):
    (ref_c, ref_p), (gen_c, gen_p) = separable(32, 0)
    r = AdversarialReward(encoder=PixelTokens(), reference=token_file(tmp_path, ref_c, ref_p), hidden=32,
                          num_patches=4)
    spec = r.parts()["discriminator"]
    assert isinstance(spec, PartSpec) and spec.lr == 1e-4 and spec.betas == (0.5, 0.999)
    opt = torch.optim.Adam(spec.module.parameters(), lr=1e-2, betas=spec.betas)  # a plain optimiser, as a test
    rollout = SimpleNamespace(samples=pack(gen_c, gen_p), prompts=["p"] * 32, metadata=[], seeds=list(range(32)))
    seen = []
    for it in range(30):
        view = FakeView(spec.module, iteration=it)
        batch = Batch(iteration=it, rollout=rollout)
        units = list(r.losses(view, batch, torch.arange(8 * (it % 4), 8 * (it % 4) + 8)))
        assert len(units) == r.units(batch, None) == 1
        loss, st = units[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append((loss.item(), st))
    assert seen[-1][0] < 0.3 * seen[0][0]
    last = seen[-1][1]
    assert last["disc/acc"] == 1.0 and last["disc/reward_gap"] > seen[0][1]["disc/reward_gap"]
    assert last["disc/fd"] > 0 and set(last) >= {"disc/loss", "disc/acc_ref", "disc/acc_gen", "disc/reward_gap"}
    m = r.monitors(pack(gen_c, gen_p), ["p"] * 32)
    assert m["disc/reward_gap"] > 0 and m["disc/acc"] == 1.0 and m["disc/fd"] > 50


def test_phases_disc_steps_per_gen_and_refs_below_gens(tmp_path):
    refs = token_file(tmp_path, torch.randn(4, 8), torch.randn(4, 6, 8))
    r = AdversarialReward(encoder=PixelTokens(), reference=refs, hidden=8)  # reference: 9:1
    solo = [i for i in range(30) if r.phases(i) and r.phases(i)[0].exclusive]
    assert solo == [i for i in range(30) if i % 10 != 9]
    assert r.phases(9) == [] and r.phases(19) == []
    ph = r.phases(3)[0]
    assert ph.parts == ("discriminator",) and ph.needs == frozenset({"rollout"})
    both = AdversarialReward(encoder=PixelTokens(), reference=refs, hidden=8, disc_steps_per_gen=2,
                             disc_on_gen_iterations=True)
    assert [bool(both.phases(i)[0].exclusive) for i in range(6)] == [True, True, False, True, True, False]
    every = AdversarialReward(encoder=PixelTokens(), reference=refs, hidden=8, disc_steps_per_gen=0)
    assert all(len(every.phases(i)) == 1 and not every.phases(i)[0].exclusive for i in range(5))

    (ref_c, ref_p), (gen_c, gen_p) = separable(8, 1)
    adaptive = AdversarialReward(encoder=PixelTokens(), reference=token_file(tmp_path, ref_c, ref_p, "s.safetensors"),
                                 hidden=8, update_when="refs_below_gens")
    assert adaptive.scope == "group"
    assert adaptive.phases(0)[0].exclusive  # no scores yet: D trains
    head = set_hand_head_wide(adaptive)
    with torch.no_grad():
        head.net[2].weight.mul_(-1)  # D prefers the generations: refs score below gens
    adaptive(pack(gen_c, gen_p), ["p"] * 8)
    assert adaptive._last[0] < adaptive._last[1] and adaptive.phases(1)[0].exclusive
    with torch.no_grad():
        head.net[2].weight.mul_(-1)  # now references win: the generator's turn, D rests
    adaptive(pack(gen_c, gen_p), ["p"] * 8)
    assert adaptive._last[0] > adaptive._last[1] and adaptive.phases(2) == []


def set_hand_head_wide(reward):
    """D(x) = sum over hidden units of gelu(mean(x)) for any width: positive for the +2 references."""
    head = reward.parts()["discriminator"].module
    with torch.no_grad():
        head.net[0].weight.fill_(1.0 / head.net[0].in_features)
        head.net[0].bias.zero_()
        head.net[2].weight.fill_(1.0)
        head.net[2].bias.zero_()
    return head


def test_state_dict_round_trip_bit_identical(tmp_path):
    from safetensors.torch import load, save

    (ref_c, ref_p), (gen_c, gen_p) = separable(8, 2)
    refs = token_file(tmp_path, ref_c, ref_p)
    kw = dict(encoder=PixelTokens(), reference=refs, hidden=16, num_patches=3, update_when="refs_below_gens")
    a = AdversarialReward(**kw)
    head = a.parts()["discriminator"].module
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    rollout = SimpleNamespace(samples=pack(gen_c, gen_p), prompts=["p"] * 8, metadata=[])
    for it in range(3):
        a.phases(it)
        for loss, _ in a.losses(FakeView(head, it), Batch(iteration=it, rollout=rollout), torch.arange(8)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    head_bytes, own_bytes = save(head.state_dict()), save(a.state_dict())  # tensors only: safetensors round trip
    assert not any(k.startswith("net.") for k in a.state_dict())  # the head's weights are the part's, not ours
    b = AdversarialReward(**kw)
    b.parts()["discriminator"].module.load_state_dict(load(head_bytes))
    b.load_state_dict(load(own_bytes))
    x = pack(gen_c, gen_p)
    assert torch.equal(a(x, ["p"] * 8), b(x, ["p"] * 8))
    assert a._last == b._last and a.phases(3) == b.phases(3) and a.iteration == b.iteration
    fresh = AdversarialReward(**kw)
    assert not torch.equal(a(x, ["p"] * 8), fresh(x, ["p"] * 8))


def test_two_shards_average_to_the_whole_batch(tmp_path):
    """Draws come from each sample's own seed, so the mean of two processes' gradients (what DDP applies, equal
    shards) equals the 1-process gradient on the whole batch."""
    (ref_c, ref_p), (gen_c, gen_p) = separable(8, 4)
    refs = token_file(tmp_path, ref_c, ref_p)
    x, seeds = pack(gen_c, gen_p), [derive_seed(9, i) for i in range(8)]

    def grads(lo, hi):
        r = AdversarialReward(encoder=PixelTokens(), reference=refs, hidden=16, num_patches=3)
        head = r.parts()["discriminator"].module
        ro = SimpleNamespace(samples=x[lo:hi], prompts=["p"] * (hi - lo), metadata=[], seeds=seeds[lo:hi])
        (loss, _), = r.losses(FakeView(head, 2), Batch(iteration=2, rollout=ro), torch.arange(hi - lo))
        loss.backward()
        return [p.grad.clone() for p in head.parameters()]

    whole, a, b = grads(0, 8), grads(0, 4), grads(4, 8)
    for gw, ga, gb in zip(whole, a, b):
        assert torch.allclose(gw, (ga + gb) / 2, atol=1e-6)
    assert any(not torch.allclose(ga, gb) for ga, gb in zip(a, b))  # the shards do differ


# ------------------------------------------------------------------------------------------ references


def write_pngs(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, im in enumerate(images):
        with open(os.path.join(folder, f"{i:02d}.png"), "wb") as f:
            f.write(encode_png(im))


def digit_images(n, seed):
    from genalign.toy.data import load_split

    x, _ = load_split("heldout")
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]


def test_digit_tokens_are_the_toy_fd_features_and_their_cells():
    from genalign.toy.metrics import digit_features

    x = digit_images(6, 0)
    cls, patches = DigitTokens().tokens(x)
    assert cls.shape == (6, 64) and patches.shape == (6, 16, 64)
    assert torch.allclose(cls, digit_features(x), atol=1e-5)
    assert torch.allclose(torch.relu(patches.mean(1)), cls, atol=1e-5)


def test_references_from_folder_embeddings_file_and_per_prompt(tmp_path):
    from genalign.rewards.encoders import decode_image

    enc = DigitTokens()
    imgs = digit_images(6, 1)
    write_pngs(str(tmp_path / "folder"), imgs)
    imgs8 = torch.stack([decode_image(encode_png(i)) for i in imgs])  # what the folder holds (8-bit)
    full_c, full_p = enc.tokens(imgs8)
    idx = torch.randperm(6, generator=torch.Generator().manual_seed(0))[:4]

    folder = References(str(tmp_path / "folder"), encoder=enc)
    assert folder.kind == "images" and folder.size == 6
    keys = folder.pick(torch.Generator().manual_seed(0), 4)
    assert keys == folder.pick(torch.Generator().manual_seed(0), 4)  # seeded
    assert keys == [os.path.join(str(tmp_path / "folder"), f"{i:02d}.png") for i in idx.tolist()]
    c, p = folder.tokens_of(keys)
    assert torch.allclose(c, full_c[idx], atol=1e-6) and p.shape == (4, 16, 64)
    assert len(folder.pick(torch.Generator().manual_seed(0), 9)) == 9  # more than the pool: permutations repeat

    path = str(tmp_path / "tokens.safetensors")
    save_reference_tokens(enc, imgs8, path, batch_size=4)
    emb = References(path, encoder=enc)
    assert emb.kind == "embeddings" and emb.has_patches and emb.size == 6
    keys = emb.pick(torch.Generator().manual_seed(0), 4)
    assert keys == idx.tolist()
    c, p = emb.tokens_of(keys)
    assert torch.allclose(c, full_c[idx], atol=1e-6) and torch.allclose(p, full_p[idx], atol=1e-6)

    write_pngs(str(tmp_path / "a"), imgs[:2])
    write_pngs(str(tmp_path / "b"), imgs[2:5])
    jl = tmp_path / "refs.jsonl"
    jl.write_text(json.dumps({"prompt": "one", "references": ["a/00.png", "a/01.png"]}) + "\n"
                  + json.dumps({"prompt": "two", "references": ["b/00.png", "b/01.png", "b/02.png"]}) + "\n")
    per = References(str(jl), encoder=enc)
    assert per.kind == "per_prompt" and per.size == 5
    keys = per.pick_all(torch.Generator().manual_seed(0), 2, ["one", "two"])
    assert sorted(keys[:2]) == [str(tmp_path / "a" / "00.png"), str(tmp_path / "a" / "01.png")]
    assert all(k.startswith(str(tmp_path / "b")) for k in keys[2:])
    c, _ = per.tokens_of(keys[:2])
    assert torch.allclose(c.sort(0).values, full_c[:2].sort(0).values, atol=1e-6)
    # a sample's metadata carries its own references
    meta = [{"references": [str(tmp_path / "b" / "02.png")]}]
    keys = per.pick_all(torch.Generator().manual_seed(0), 3, ["unknown"], meta)
    assert torch.allclose(per.tokens_of(keys)[0], full_c[4:5].expand(3, -1), atol=1e-6)
    with pytest.raises(GenalignError, match="no references for prompt 'three'"):
        per.pick(torch.Generator().manual_seed(0), 1, "three")
    with pytest.raises(GenalignError, match="need an image reference source"):
        emb.pick(torch.Generator().manual_seed(0), 1, "x", meta[0])


def test_per_prompt_references_reach_the_losses(tmp_path):
    imgs = digit_images(4, 3)
    write_pngs(str(tmp_path / "a"), imgs)
    jl = tmp_path / "refs.jsonl"
    jl.write_text(json.dumps({"prompt": "a handwritten digit one", "references": [f"a/0{i}.png" for i in range(4)]}))
    r = build_reward("adversarial", {"encoder": "digits", "reference": str(jl), "num_patches": 16, "hidden": 8,
                                     "refs_per_sample": 3})
    head = r.parts()["discriminator"].module
    rollout = SimpleNamespace(samples=torch.rand(2, 3, 16, 16), prompts=["a handwritten digit one"] * 2,
                              metadata=[{}, {}])
    (loss, st), = r.losses(FakeView(head), Batch(iteration=0, rollout=rollout), [0, 1])
    assert torch.isfinite(loss) and loss.requires_grad and 0 <= st["disc/acc"] <= 1


# ------------------------------------------------------------------------------------------ encoders


def test_tiny_dinov2_tokens_and_reward(tiny_dinov2):
    enc = build_token_encoder("dinov2", {"model": tiny_dinov2})
    x = torch.rand(3, 3, 24, 40)
    cls, patches = enc.tokens(x)
    assert cls.shape == (3, 32) and patches.shape == (3, 16, 32)  # 32 px, patch 8 -> 4x4 patches
    from transformers import Dinov2Model

    from genalign.rewards.clip import IMAGENET_MEAN, IMAGENET_STD

    y = torch.rand(2, 3, 32, 32)  # at the model's size: no resize, ImageNet normalisation, layer-normed tokens
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        h = Dinov2Model.from_pretrained(tiny_dinov2)(pixel_values=(y - mean) / std).last_hidden_state
    c, p = enc.tokens(y)
    assert torch.allclose(c, h[:, 0], atol=1e-5) and torch.allclose(p, h[:, 1:], atol=1e-5)
    r = build_reward("adversarial", {"encoder": "dinov2", "encoder_args": {"model": tiny_dinov2},
                                     "reference": THICK, "hidden": 8, "num_patches": 4})
    s = r(x, ["p"] * 3)
    assert s.shape == (3,) and torch.isfinite(s).all()


def test_clip_vision_tokens(tmp_path):
    """From a full CLIPModel checkpoint (as the hub's are): the class token is CLIP's pooled image output."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    m = CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=100),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8), projection_dim=8))
    m.save_pretrained(str(tmp_path))
    enc = build_token_encoder("clip", {"model": str(tmp_path)})
    x = torch.rand(2, 3, 16, 16)
    cls, patches = enc.tokens(x)
    assert cls.shape == (2, 16) and patches.shape == (2, 4, 16)
    with torch.no_grad():
        pooled = m.vision_model(pixel_values=enc.preprocess(x)).pooler_output
    assert torch.allclose(cls, pooled, atol=1e-5)


# ------------------------------------------------------------------------------------------ bad input, recipes


@pytest.mark.parametrize("args, match", [
    ({"feature_norm": "l2"}, "feature_norm is 'l2'; valid choices: reference, normalized, raw"),
    ({"update_when": "sometimes"}, "update_when is 'sometimes'; valid choices: always, refs_below_gens"),
    ({"encoder": "vgg"}, "unknown encoder 'vgg'; valid choices: dinov2, clip, digits"),
    ({"reference_kind": "text"}, "unknown reference_kind 'text'; valid choices: auto, images, embeddings, per_prompt"),
    ({"num_patches": 0}, "num_patches must be an integer >= 1"),
    ({"disc_steps_per_gen": -1}, "disc_steps_per_gen must be an integer >= 0"),
    ({"cls_weight": 1.5}, "cls_weight must be in"),
])
def test_bad_options_one_line(args, match):
    kw = {"encoder": "digits", "reference": THICK, **args}
    with pytest.raises(ConfigError) as e:
        build_reward("adversarial", kw)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_missing_references_one_line(tmp_path):
    for ref, match in [(str(tmp_path / "nope"), "reference folder '.*nope' does not exist"),
                       (str(tmp_path / "nope.safetensors"), "reference embeddings file .* not found"),
                       (str(tmp_path / "nope.jsonl"), "reference prompts file .* not found")]:
        with pytest.raises(GenalignError, match=match) as e:
            build_reward("adversarial", {"encoder": "digits", "reference": ref})
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="needs reference"):
        build_reward("adversarial", {"encoder": "digits"})
    pooled = token_file(tmp_path, torch.randn(3, 64))
    with pytest.raises(ConfigError, match="has no 'patches' tensor"):
        build_reward("adversarial", {"encoder": "digits", "reference": pooled})
    r = build_reward("adversarial", {"encoder": "digits", "reference": pooled, "cls_weight": 1.0,
                                     "patch_loss_weight": 0.0})
    assert r(torch.rand(2, 3, 16, 16), ["p", "p"]).shape == (2,)


def test_recipes_validate_and_toy_reward_builds(monkeypatch):
    from genalign.config import load_config
    from genalign.rewards.base import build_rewards

    monkeypatch.chdir(REPO)
    toy = load_config("configs/toy/adv_grpo.yaml")
    sd = load_config("configs/sd35/adv_grpo_dino.yaml")
    adv = sd.rewards[0]
    assert adv.name == "adversarial" and adv.args["disc_steps_per_gen"] == 9 and adv.args["lr"] == 1e-4
    assert sd.sampler.noise_level == 0.8 and sd.data.group_size == 16 and sd.algorithm.args["clip_range"] == 1e-5
    rewards = build_rewards(toy.rewards)
    adv = rewards[0]
    assert isinstance(adv, AdversarialReward) and adv.references.size == 117
    s = adv(torch.rand(4, 3, 16, 16), ["a handwritten digit one"] * 4)
    assert torch.isfinite(s).all()
    assert isinstance(adv.parts()["discriminator"].module, DiscriminatorHead)
