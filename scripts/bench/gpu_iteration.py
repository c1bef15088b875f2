"""One command for a GPU machine: real-size random-weight SD3.5-Medium and FLUX.1 transformers (built from their
configs, nothing downloaded), a few Flow-GRPO and DiffusionNFT iterations at 512 px with LoRA r 32, gradient
checkpointing and bf16, with and without ``model.compile``; prints seconds per iteration split rollout / reward /
update, trajectories per second and peak GPU memory.

    python scripts/bench/gpu_iteration.py                          # both models, grpo + nft, compile off + on
    python scripts/bench/gpu_iteration.py --models sd35m --algorithms grpo --compile off --iterations 2
    python scripts/bench/gpu_iteration.py --tiny --steps 2 --compile off   # CPU dry run: tiny pipelines, 32 px, fp32

Text encoders and VAEs are small random stand-ins with the real embedding widths (SD3.5-M: CLIP 768 + 1280 and no
T5, whose slot diffusers zero-pads to 4096; FLUX: CLIP-L 768 pooled + a 1-layer T5 of width 4096), so the timings are
the denoiser's. The pipelines are built in memory on the device in bf16. Each configuration runs warm-up
iterations (which include compilation) and then timed ones; the reward is a cheap brightness score.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _clip(hidden, proj, with_projection=True):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=1, num_attention_heads=8,
                         projection_dim=proj, vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407)
    return CLIPTextModelWithProjection(cfg) if with_projection else CLIPTextModel(cfg)


def _vae(latent_channels=16, scaling=1.5305, shift=0.0609):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         scaling_factor=scaling, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False)


def build_sd35m(tmp):
    """SD3.5-Medium's transformer config (24 MMDiT-X blocks, 13 with dual attention, 1536 wide, qk RMS-norm)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from genalign.utils.tokenizers import build_clip_tokenizer

    tok = build_clip_tokenizer(os.path.join(tmp, "_tok"))
    tr = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                               num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                               pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                               dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
    return StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=tr, vae=_vae(),
                                    text_encoder=_clip(768, 768), tokenizer=tok, text_encoder_2=_clip(1280, 1280),
                                    tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None)


def build_flux1(tmp):
    """FLUX.1-dev's transformer config (19 double + 38 single blocks, 3072 wide, embedded guidance)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from genalign.testing.tiny import build_t5_tokenizer
    from genalign.utils.tokenizers import build_clip_tokenizer

    tok = build_clip_tokenizer(os.path.join(tmp, "_tok"))
    tok2 = build_t5_tokenizer(os.path.join(tmp, "_tok2"))
    tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok2), d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=8,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=sched, vae=_vae(16, 0.3611, 0.1159), text_encoder=_clip(768, 768, False),
                        tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok2, transformer=tr)


def build_tiny(family):
    def build(tmp):  # a pipeline folder, loaded by the adapter as a hub id would be
        from genalign.testing import tiny

        out = os.path.join(tmp, f"tiny_{family}")
        if not os.path.exists(os.path.join(out, "model_index.json")):
            {"sd3": tiny.build_tiny_sd3, "flux": tiny.build_tiny_flux}[family](out)
        return out
    return build


MODELS = {  # name -> (family, builder, tiny builder)
    "sd35m": ("sd3", build_sd35m, build_tiny("sd3")),
    "flux1": ("flux", build_flux1, build_tiny("flux")),
}


def algorithm_section(name, family):
    if name == "grpo":  # Flow-GRPO (METHODS.md §3.8): 10 SDE steps, 9 trained, KL 0.04 to the adapter-off base
        return {"name": "grpo", "clip_range": 1e-4, "beta": 0.04}
    return {"name": "nft", "beta": 1.0}  # DiffusionNFT: deterministic CFG-free rollouts, 9 trained timesteps


def run_one(a, model, algorithm, compile_on, device, tmp):
    from genalign.config import build_config
    from genalign.registry import MODELS as FAMILIES
    from genalign.trainer import Trainer

    family, build, build_small = MODELS[model]
    cls = FAMILIES.get(family)
    orig_load, pipe, path = cls.__dict__.get("load"), None, "in-memory"
    if a.tiny:
        path = build_small(tmp)
    else:
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device(device):
                pipe = build(tmp)
        finally:
            torch.set_default_dtype(prev)
        cls.load = classmethod(lambda c, cfg, device="cpu": c(pipe, cfg, device))  # the in-memory pipeline
    hw = 32 if a.tiny else a.size
    g = 3.5 if family == "flux" else 4.5
    raw = {
        "model": {"family": family, "path": path, "height": hw, "width": hw,
                  "dtype": "fp32" if a.tiny else "bf16", "gradient_checkpointing": True, "compile": compile_on,
                  "max_sequence_length": 128 if family == "sd3" else 256, "lora": {"rank": 32, "alpha": 64}},
        "sampler": {"num_steps": a.steps, "eval_num_steps": a.steps, "guidance_scale": g, "kernel": "sde", "noise_level": 0.7},
        "data": {"prompts": [f"a photo of object {i}" for i in range(16)], "group_size": a.group,
                 "prompts_per_iteration": a.prompts, "eval_prompts": ["a cat"], "eval_seeds": [0]},
        "train": {"iterations": a.warmup + a.iterations, "rollout_batch_size": a.batch, "train_batch_size": a.batch,
                  "mixed_precision": "no" if a.tiny else "bf16", "eval_every": 0, "save_every": 0,
                  "optimizer_steps_per_iteration": 2},
        "algorithm": algorithm_section(algorithm, family),
        "rewards": [{"name": "brightness"}],
        "run": {"output_dir": os.path.join(tmp, f"run_{model}_{algorithm}_{compile_on}"), "log_with": ["none"],
                "progress": False, "overwrite": True},
    }
    cfg = build_config(raw, [])
    tr = None
    try:
        tr = Trainer(cfg)
        tr.setup()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for it in range(a.warmup + a.iterations):
            tr.iteration = it
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            m = tr.iterate(it)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if it >= a.warmup:
                rows.append({"seconds": time.perf_counter() - t, "rollout": m["time/rollout"],
                             "reward": m["time/reward"], "update": m["time/update"]})
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        med["traj_per_s"] = tr.n_local * tr.world / med["seconds"]
        med["peak_gib"] = peak
        return med
    finally:
        if pipe is not None:
            if orig_load is not None:
                cls.load = orig_load
            else:
                del cls.load
        tr = pipe = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="sd35m,flux1", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--algorithms", default="grpo,nft", help="comma list of: grpo, nft")
    ap.add_argument("--compile", default="off,on", help="comma list of: off, on")
    ap.add_argument("--size", type=int, default=512, help="image size in pixels")
    ap.add_argument("--group", type=int, default=4, help="samples per prompt")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per iteration")
    ap.add_argument("--batch", type=int, default=4, help="rollout and train micro-batch")
    ap.add_argument("--steps", type=int, default=10, help="sampling steps (Flow-GRPO: 10, 9 trained)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="CPU dry run on the tiny pipelines (32 px, fp32)")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from genalign.cli import quiet_libraries

    quiet_libraries()
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    if device.type != "cuda" and not a.tiny:
        raise SystemExit("no CUDA device: run with --tiny for a CPU dry run of the script")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    models = [m for m in a.models.split(",") if m]
    algs = [x for x in a.algorithms.split(",") if x]
    comps = [c == "on" for c in a.compile.split(",") if c]
    bad = [m for m in models if m not in MODELS] + [x for x in algs if x not in ("grpo", "nft")]
    if bad:
        raise SystemExit(f"unknown model/algorithm {bad}")
    print(f"device: {name}; {'tiny 32 px fp32' if a.tiny else f'{a.size} px bf16'}; LoRA r 32; gradient "
          f"checkpointing; {a.prompts} prompts x {a.group} = {a.prompts * a.group} trajectories per iteration; "
          f"micro-batch {a.batch}; median of {a.iterations} after {a.warmup} warm-up", flush=True)
    head = f"{'model':>6} {'alg':>5} {'compile':>7} {'s/iter':>8} {'rollout':>8} {'reward':>8} {'update':>8} " \
           f"{'traj/s':>7} {'peak GiB':>9}"
    print(head, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            for alg in algs:
                for c in comps:
                    r = run_one(a, m, alg, c, device, tmp)
                    print(f"{m:>6} {alg:>5} {('on' if c else 'off'):>7} {r['seconds']:8.2f} {r['rollout']:8.2f} "
                          f"{r['reward']:8.2f} {r['update']:8.2f} {r['traj_per_s']:7.2f} {r['peak_gib']:9.2f}",
                          flush=True)


if __name__ == "__main__":
    main()
