"""Benchmark: genalign's rollout() with per-step log-probs vs the stock pipeline's __call__, and one full
training iteration split into rollout / reward / update. Both measured side by side in one run.

    python scripts/bench/rollout_overhead.py                     # tiny random SD3 at 32 px (CPU, seconds)
    python scripts/bench/rollout_overhead.py --preset sd35m --height 512 --width 512 --dtype bf16 \
        --gradient-checkpointing                                 # SD3.5-Medium-sized random transformer (GPU)

Prints the device, the median times and the ratio rollout/stock (target <= 1.05x), then the training
iteration split. Random weights only: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def build_sd35m(out_dir: str) -> str:
    """A random-weight pipeline whose transformer and VAE have SD3.5-Medium's real sizes; small text encoders with
    the real embedding widths (T5 omitted: its slot is zero-padded as SD3 does without T5)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from genalign.utils.tokenizers import build_clip_tokenizer

    tok = build_clip_tokenizer(os.path.join(out_dir, "_tok"))
    tr = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                               num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                               pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                               dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                        block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)

    def clip(hidden, proj):
        return CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=hidden, intermediate_size=hidden * 2,
                                                          num_hidden_layers=1, num_attention_heads=8,
                                                          projection_dim=proj, vocab_size=49408,
                                                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))

    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=tr, vae=vae,
                                    text_encoder=clip(768, 768), tokenizer=tok, text_encoder_2=clip(1280, 1280),
                                    tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeats):
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "sd35m"], default="tiny")
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--iterations", type=int, default=3, help="training iterations timed")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from genalign.cli import quiet_libraries

    quiet_libraries()
    from genalign.config import ModelConfig, SamplerConfig, build_config
    from genalign.models.sd3 import SD3Generator
    from genalign.testing.tiny import build_tiny_sd3

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    tmp = tempfile.mkdtemp()
    path = build_sd35m(tmp) if args.preset == "sd35m" else build_tiny_sd3(tmp)
    mcfg = ModelConfig(family="sd3", path=path, height=args.height, width=args.width, dtype=args.dtype,
                       gradient_checkpointing=args.gradient_checkpointing)
    gen = SD3Generator.load(mcfg, device=device)
    scfg = SamplerConfig(num_steps=args.steps, guidance_scale=args.guidance)
    prompts = [f"a photo of object {i}" for i in range(args.batch)]
    seeds = list(range(args.batch))
    cond = gen.encode(prompts, args.guidance)

    def ours():
        with torch.autocast(device.type, dtype=gen.weight_dtype, enabled=args.dtype != "fp32"):
            gen.rollout(prompts, seeds, scfg, cond=cond)

    def stock():
        lat = gen.initial_noise(seeds).to(gen.weight_dtype)
        with torch.no_grad():
            gen.pipe(prompt_embeds=cond["pos"]["enc"], pooled_prompt_embeds=cond["pos"]["pooled"],
                     negative_prompt_embeds=cond["neg"]["enc"], negative_pooled_prompt_embeds=cond["neg"]["pooled"],
                     num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height,
                     width=args.width, latents=lat, output_type="pt")

    ours(), stock()  # warm-up
    ts, to = [], []
    for _ in range(args.repeats):  # interleaved, so that machine load affects both alike
        ts.append(timeit(stock, device, 1)[0])
        to.append(timeit(ours, device, 1)[0])
    t_stock, t_ours = statistics.median(ts), statistics.median(to)
    print(f"device: {name}; preset {args.preset}; {args.height}x{args.width}; {args.steps} steps; CFG {args.guidance}; "
          f"batch {args.batch}; dtype {args.dtype}")
    print(f"stock pipeline __call__ : {t_stock:8.3f} s (median of {args.repeats})")
    print(f"genalign rollout()      : {t_ours:8.3f} s (with per-step log-probs, trajectory stored)")
    print(f"ratio rollout/stock     : {t_ours / t_stock:8.3f}x (target <= 1.05x)")

    # ---- one full training iteration, split
    del gen
    out = os.path.join(tmp, "run")
    raw = {
        "model": {"family": "sd3", "path": path, "height": args.height, "width": args.width, "dtype": args.dtype,
                  "gradient_checkpointing": args.gradient_checkpointing, "lora": {"rank": 32, "alpha": 64}},
        "sampler": {"num_steps": args.steps, "eval_num_steps": args.steps, "guidance_scale": args.guidance},
        "data": {"prompts": prompts, "group_size": args.batch, "prompts_per_iteration": 1,
                 "eval_prompts": prompts[:1], "eval_seeds": [0]},
        "train": {"iterations": args.iterations, "rollout_batch_size": args.batch, "train_batch_size": args.batch,
                  "eval_every": 0, "save_every": 0,
                  "mixed_precision": {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[args.dtype]},
        "algorithm": {"name": "grpo", "beta": 0.04},
        "rewards": [{"name": "genalign.testing.bench_rewards:Brightness"}],
        "run": {"output_dir": out, "log_with": ["none"], "progress": False},
    }
    from genalign.trainer import Trainer

    t = Trainer(build_config(raw))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t.train()
    import json

    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))][1:] or \
        [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    def med(k):
        return statistics.median(r[k] for r in rows)
    tot = med("seconds")
    print(f"training iteration ({args.batch} trajectories, {args.steps} steps, {len(t.generator.trainable_parameters())} "
          f"LoRA tensors, KL on): {tot:.3f} s = rollout {med('time/rollout'):.3f} ({med('time/rollout') / tot:.0%}) + "
          f"reward {med('time/reward'):.3f} ({med('time/reward') / tot:.0%}) + update {med('time/update'):.3f} "
          f"({med('time/update') / tot:.0%})")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
