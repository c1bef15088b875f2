"""The tones recipes run through the trainer (one iteration, small batches) on an untrained tones-shaped
StableAudioPipeline (genalign/tones/pipeline.py: the analytic MDCT Oobleck codec, 1 DiT layer): GRPO, NFT and
DRAGON (full-set FAD, per-song exemplar log-density, text exemplars) all train the policy on the EDM law and write
WAV evaluations."""

import json
import os

import pytest
import torch

from genalign.config import load_config
from genalign.trainer import Trainer

from tests.core.helpers import REPO


@pytest.fixture(scope="module")
def tones_pipe(tmp_path_factory):
    from genalign.tones.pipeline import make_pipeline

    d = tmp_path_factory.mktemp("tones_pipe")
    pipe = make_pipeline(str(d / "_tok"), seed=0, num_layers=1)
    pipe.save_pretrained(str(d / "pipe"), safe_serialization=True)
    return str(d / "pipe")


@pytest.mark.parametrize("name", ["tones_grpo", "tones_grpo_plain", "tones_grpo_experts", "tones_nft",
                                  "tones_dragon_fad", "tones_dragon_song", "tones_dragon_text"])
def test_tones_recipe_trains_one_iteration(name, tones_pipe, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(os.path.join("configs", "toy", f"{name}.yaml"), [
        f"model.path={tones_pipe}", f"run.output_dir={tmp_path / 'run'}", "run.log_with=[none]", "run.progress=false",
        "train.iterations=1", "train.eval_every=1", "train.save_every=0", "sampler.num_steps=3",
        "sampler.eval_num_steps=2", "data.group_size=4", "data.prompts_per_iteration=2", "train.rollout_batch_size=8",
        "train.train_batch_size=8", "train.optimizer_steps_per_iteration=1", "data.eval_seeds=[0]",
        "data.eval_prompts=[a C note, sine, legato]"])
    t = Trainer(cfg)
    t.setup()
    before = {n: p.detach().clone() for n, p in t.generator.named_trainable_parameters()}
    t.train()
    changed = sum(not torch.equal(p.detach(), before[n]) for n, p in t.generator.named_trainable_parameters())
    assert changed > 0
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert rows and all(r.get("skipped_nonfinite_loss", 0) == 0 for r in rows)
    wavs = [f for _, _, fs in os.walk(tmp_path / "run" / "samples") for f in fs if f.endswith(".wav")]
    assert wavs
