"""The LoRA round trips both audio families must pass (diffusers has no LoRA loader for either transformer)."""

import os

import torch

from genalign.registry import MODELS


def check_lora_round_trips(gen, family, cfg, tiny_path, pipe_class, tmp_path, probe):
    """``gen`` (a LoRA generator of ``family``) against its reference, a fresh rank-0 load, genalign's
    save/reload, peft's own loader and ``genalign export --fuse``. ``cfg(path, rank=...)`` builds its model config,
    ``probe = (x, t, cond)``. Returns (checkpoint folder, adapted output) for family-specific checks."""
    from peft import PeftModel

    from genalign.export import export

    x, t, cond = probe
    with torch.no_grad():
        adapted = gen.model_forward(gen.denoiser, x, t, cond).float()
        with gen.reference() as ref:
            base = gen.model_forward(ref, x, t, cond).float()
        again = gen.model_forward(gen.denoiser, x, t, cond).float()
    assert float((adapted - base).abs().max()) > 1e-3
    torch.testing.assert_close(again, adapted, atol=0, rtol=0)  # leaving reference() restores the adapter
    fresh = MODELS.get(family).load(cfg(tiny_path, rank=0))
    with torch.no_grad():
        torch.testing.assert_close(fresh.model_forward(fresh.denoiser, x, t, cond).float(), base, atol=1e-6, rtol=0)

    # a checkpoint-like folder: PEFT adapter + genalign's file; reload into a fresh LoRA generator
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-1"
    gen.save_lora(str(ckpt))
    assert {"adapter_config.json", "adapter_model.safetensors", "pytorch_lora_weights.safetensors"} <= set(
        os.listdir(ckpt))
    other = MODELS.get(family).load(cfg(tiny_path))
    other.load_checkpoint(str(ckpt))
    with torch.no_grad():
        # float32 round-off of the reloaded adapter (the same tolerance as peft's own loader below)
        torch.testing.assert_close(other.model_forward(other.denoiser, x, t, cond).float(), adapted, atol=1e-5,
                                   rtol=1e-5)
    peft_net = PeftModel.from_pretrained(pipe_class.from_pretrained(tiny_path).transformer, str(ckpt))
    with torch.no_grad():
        torch.testing.assert_close(gen.model_forward(peft_net, x, t, cond).float(), adapted, atol=1e-5, rtol=1e-5)

    # `genalign export --fuse`: a full pipeline that from_pretrained loads, reproducing the adapted model
    (ckpt / "trainer_state.json").write_text('{"base_model": "%s", "family": "%s", "lora": true}'
                                             % (tiny_path, family))
    fused = pipe_class.from_pretrained(export(str(ckpt), str(tmp_path / "fused"), fuse=True))
    with torch.no_grad():
        torch.testing.assert_close(gen.model_forward(fused.transformer, x, t, cond).float(), adapted, atol=1e-5,
                                   rtol=1e-5)
    assert not any("lora" in k for k in fused.transformer.state_dict())
    return ckpt, adapted
