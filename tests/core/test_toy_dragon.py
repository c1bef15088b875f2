"""CI-sized DRAGON runs on the embedded digits world: the shipped DRAGON recipes move the model's samples towards an
exemplar set the base under-represents (the thick-stroke held-out digits), on held-out seeds, without losing
correctness — for the instance-to-set reward (``exemplar_loglik``, split per prompt group) and the set-to-set
reward (``fd``, split by leave-one-out contribution). Full-length figures: README, "DRAGON on the toy world".

Budgets: 40 iterations at a higher learning rate than the recipes' (which are tuned for the best point of a
few-minute run), about 10 s of training each. Measured once on these seeds (10 prompts x 16 seeds 5000..5015):
thick share 0.19 -> 0.51 (instance) / 0.53 (set); FD to the exemplars 198 -> 143 / 115; correctness 0.67 -> 0.67 /
0.65. Seed noise of the base's thick share over 80-sample halves of these seeds: 0.14 vs 0.25 (so about 0.05 for
160 samples); the asserted rise (+0.2) is about 4 of those."""

import os

import pytest
import torch
from safetensors.torch import load_file

from genalign.config import load_config
from genalign.rewards.base import build_reward
from genalign.toy.data import THICK_INK, ink
from genalign.toy.metrics import digit_features, feature_fd
from genalign.trainer import Trainer

from .helpers import REPO

SEEDS = list(range(5000, 5016))
EXEMPLARS = os.path.join(REPO, "assets", "toy", "exemplars", "thick_digits.safetensors")
RECIPES = {"dragon_instance": "train.learning_rate=5e-4", "dragon_fd": "train.learning_rate=1e-3"}


def _measure(images, prompts):
    return {"thick": float((ink(images) > THICK_INK).float().mean()),
            "fd": feature_fd(digit_features(images), load_file(EXEMPLARS)["embeddings"]),
            "correctness": float(build_reward("digit_correctness")(images, prompts).mean())}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_dragon_moves_samples_towards_the_exemplars(tmp_path, monkeypatch, recipe):
    monkeypatch.chdir(REPO)
    cfg = load_config(os.path.join(REPO, "configs", "toy", f"{recipe}.yaml"), [
        RECIPES[recipe], "train.iterations=40", "train.max_minutes=0", "train.eval_every=0", "train.save_every=0",
        f"run.output_dir={tmp_path / 'run'}", "run.log_with=[none]", "run.progress=false"])
    t = Trainer(cfg)
    t.setup()
    prompts = list(cfg.data.prompts)
    P = [p for p in prompts for _ in SEEDS]
    S = SEEDS * len(prompts)
    with torch.no_grad(), t.generator.reference():
        base = _measure(t.generator.rollout(P, S, cfg.sampler, stochastic=False).samples, P)
    t.train()
    with torch.no_grad():
        trained = _measure(t.generator.rollout(P, S, cfg.sampler, stochastic=False).samples, P)
    print(f"{recipe}: base {base} -> trained {trained}")
    assert trained["thick"] > base["thick"] + 0.2, (base, trained)
    assert trained["fd"] < 0.85 * base["fd"], (base, trained)
    assert trained["correctness"] > base["correctness"] - 0.1, (base, trained)
