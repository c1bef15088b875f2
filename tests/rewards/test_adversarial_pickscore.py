"""Adv-GRPO's PickScore variant: a CLIP preference model whose last vision block trains against references."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from genalign.core.phases import Batch
from genalign.core.seeding import derive_seed
from genalign.errors import ConfigError
from genalign.rewards.adversarial_pickscore import AdversarialPickScoreReward, pairwise_preference_loss
from genalign.rewards.base import build_reward

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THICK = os.path.join(REPO, "assets", "toy", "exemplars", "thick_digits")


class FakeView:
    def __init__(self, module, iteration=0):
        self.mod, self.iteration, self.device, self.rank, self.world = module, iteration, torch.device("cpu"), 0, 1

    def module(self, part):
        assert part == "reward_model"
        return self.mod

    def seed(self, *parts):
        return derive_seed(0, self.iteration, *parts)

    def all_reduce(self, t, op="sum"):
        return t


@pytest.fixture(scope="module")
def tiny_pick(tmp_path_factory):
    """An untrained tiny CLIPModel (2 vision blocks, 16 px) with the CLIP tokenizer, saved locally."""
    from transformers import CLIPConfig, CLIPModel

    from genalign.utils.tokenizers import write_clip_tokenizer_files

    d = str(tmp_path_factory.mktemp("tinypick"))
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=8), projection_dim=8)).save_pretrained(d)
    write_clip_tokenizer_files(d)
    return d


def test_pairwise_preference_loss_by_hand():
    loss, st = pairwise_preference_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus(s_gen − s_ref)
    assert loss.item() == pytest.approx((sp(-1.0) + sp(1.0)) / 2, abs=1e-6)
    assert st["disc/acc"] == 0.5 and st["disc/reward_gap"] == pytest.approx(0.0)


def test_scores_are_pickscore_and_only_the_last_block_trains(tiny_pick):
    from genalign.rewards.clip import PickScoreReward

    r = build_reward("adversarial_pickscore", {"model": tiny_pick, "processor": tiny_pick, "reference": THICK,
                                               "update_when": "always"})
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["a digit", "a cat", "a digit"]
    ref = PickScoreReward(model=tiny_pick, processor=tiny_pick)(x, prompts)
    with torch.enable_grad():
        got = r(x, prompts)
    assert not got.requires_grad and torch.allclose(got, ref, atol=1e-5)
    tail = r.parts()["reward_model"].module
    layers = r.clip.model.vision_model.encoder.layers
    assert tail.layers[0] is layers[-1]
    trainable = {id(p) for p in r.clip.model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in layers[-1].parameters()}
    assert r.parts()["reward_model"].lr == 5e-6


def test_losses_train_the_tail_towards_the_references(tiny_pick):
    r = build_reward("adversarial_pickscore", {"model": tiny_pick, "processor": tiny_pick, "reference": THICK})
    assert r.scope == "group" and r.phases(0)[0].exclusive  # refs_below_gens, nothing scored yet: train
    tail = r.parts()["reward_model"].module
    frozen = {k: v.clone() for k, v in r.clip.model.vision_model.encoder.layers[0].state_dict().items()}
    opt = torch.optim.Adam(tail.parameters(), lr=3e-3)
    gens = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.3 + 0.7  # bright noise
    rollout = SimpleNamespace(samples=gens, prompts=["a handwritten digit"] * 8, metadata=[])
    seen = []
    for it in range(25):
        r.phases(it)
        (loss, st), = r.losses(FakeView(tail, it), Batch(iteration=it, rollout=rollout), torch.arange(8))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append((loss.item(), st))
    assert seen[-1][0] < 0.5 * seen[0][0] and seen[-1][1]["disc/acc"] == 1.0
    assert r._last[0] > r._last[1] and r.phases(25) == []  # references now win: the generator's turn
    for k, v in r.clip.model.vision_model.encoder.layers[0].state_dict().items():
        assert torch.equal(v, frozen[k])
    # scoring sees the trained block
    s = r(gens, ["a handwritten digit"] * 8)
    assert r._last[0] > r._last[1] and torch.isfinite(s).all()


def test_per_prompt_pairs_and_bad_input(tiny_pick, tmp_path):
    from genalign.rewards.encoders import encode_png

    os.makedirs(tmp_path / "r")
    (tmp_path / "r" / "a.png").write_bytes(encode_png(torch.zeros(3, 8, 8)))
    (tmp_path / "r" / "b.png").write_bytes(encode_png(torch.ones(3, 8, 8)))
    jl = tmp_path / "refs.jsonl"
    jl.write_text(json.dumps({"prompt": "dark", "references": ["r/a.png"]}) + "\n"
                  + json.dumps({"prompt": "light", "references": ["r/b.png"]}) + "\n")
    r = AdversarialPickScoreReward(model=tiny_pick, processor=tiny_pick, reference=str(jl))
    keys = r.references.pick_all(torch.Generator().manual_seed(0), 1, ["light", "dark", "light"])
    pairs = r.references.images_of(keys)
    assert pairs.shape == (3, 3, 8, 8) and pairs[:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match="token file"):
        AdversarialPickScoreReward(model=tiny_pick, reference=str(tmp_path / "t.safetensors"))
    with pytest.raises(ConfigError, match="update_when is 'never'; valid choices: always, refs_below_gens"):
        AdversarialPickScoreReward(model=tiny_pick, reference=THICK, update_when="never")
    with pytest.raises(ConfigError, match="trainable_blocks is 3 but the vision tower has 2 blocks"):
        AdversarialPickScoreReward(model=tiny_pick, processor=tiny_pick, reference=THICK, trainable_blocks=3).parts()
