"""configs/tiny/*.yaml: a couple of GRPO iterations per model family on tiny random-weight pipelines, run through
the real config file (only the model path and output dir are overridden)."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from genalign.config import load_config
from genalign.testing import tiny
from genalign.trainer import Trainer

from .helpers import REPO

BUILD = {"sd3": tiny.build_tiny_sd3, "flux": tiny.build_tiny_flux, "sd15": tiny.build_tiny_sd15,
         "sdxl": tiny.build_tiny_sdxl}


@pytest.mark.parametrize("family", sorted(BUILD))
def test_tiny_recipe_trains(family, tmp_path):
    model = BUILD[family](str(tmp_path / "model"))
    cfg = load_config(os.path.join(REPO, "configs", "tiny", f"{family}.yaml"),
                      [f"model.path={model}", f"run.output_dir={tmp_path / 'run'}", "run.log_with=[none]",
                       "run.progress=false"])
    t = Trainer(cfg)
    t.setup()
    before = {n: p.detach().clone() for n, p in t.generator.named_trainable_parameters()}
    t.train()
    after = dict(t.generator.named_trainable_parameters())
    changed = sum(not torch.equal(after[n].detach(), b) for n, b in before.items())
    assert changed == len(before), f"{changed}/{len(before)} LoRA tensors changed"
    rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == 2 and all(r["skipped_nonfinite_loss"] == 0 for r in rows)
    ck = tmp_path / "run" / "checkpoints" / "checkpoint-2" / "pytorch_lora_weights.safetensors"
    assert len(load_file(str(ck))) == len(before)
