"""Build the ``tones`` base text-to-audio pipeline: a small ``StableAudioPipeline`` of the real Stable Audio classes
pretrained on tones clips, imperfect on purpose. Writes assets/tones/pipeline/ (diffusers folder, safetensors) and
its manifest.json. One CPU thread, about 930 CPU-s for the shipped base (two commands):

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/build_tones_pipeline.py --out runs/clean \
        --phases 2250:2e-3:0,6000:1e-3:0 --select-every 1000                     # 751 CPU-s, selection 0.94
    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/build_tones_pipeline.py --out assets/tones/pipeline \
        --init runs/clean --phases 1500:1e-3:0.35:0.3 --select-every 500        # 175 CPU-s, held-out 0.567

Components (all the stock classes, loaded by ``StableAudioPipeline.from_pretrained``; genalign/tones/pipeline.py):

* ``AutoencoderOobleck`` set **analytically** to a two-stage MDCT filter bank (hop 256, frame 512, coefficients
  16..63 = 250–1000 Hz; latent 48 × 32 per 1 s clip), stored as float16.
* ``T5EncoderModel`` (1 layer, d 32, frozen random, as SAO's T5 is frozen) + a word-level ``T5TokenizerFast``
  over the tones vocabulary; ``StableAudioProjectionModel`` (trained); ``StableAudioDiTModel`` (3 layers, trained);
  ``CosineDPMSolverMultistepScheduler`` of the released checkpoint (σ 0.3..500, v-prediction, σ_data 1).
* Training loss: the v-MSE of stable-audio-tools (σ = tan(tπ/2), model input cos·x0 + sin·ε, target
  cos·ε − sin·x0), t ~ U(``--t-min`` 0.15, ``--t-max`` 0.95) (the sampler never asks below t = 0.19, σ = 0.3, and
  t > 0.95 is nearly pure noise), 10 % condition dropout to zeros (the stock pipeline's CFG unconditional branch).
* **Imperfect on purpose, in its sample distribution** (``--phases steps:lr:label_noise[:attribute_drop],...``):
  fixed phases, each with a fresh AdamW and warm-up; in each, a fraction ``label_noise`` of the clips is captioned
  with the root a **tritone** away (kind, timbre, articulation kept; a ±6 shift keeps every caption in its own
  train / held-out split), and ``attribute_drop`` leaves the timbre and, independently, the articulation out of that
  fraction of captions (so "a C note, bright" plays either articulation: the room DRAGON's exemplar runs need).
  The shipped base: 8,250 clean steps make it play the prompted notes precisely (selection 0.94, held-out 0.937),
  then from those weights (``--init``) 1,500 steps at label noise 0.35 and attribute drop 0.3 make it play the
  wrong root in part of its samples *per seed* (held-out 0.567): errors that vary with the seed, which
  group-relative methods can sharpen, over a precise base (README "Tones world"). Snapshots are scored every
  ``--select-every`` steps (held-out prompts, *selection* seeds 500/501, 20 stochastic steps, CFG 3) and recorded;
  they never stop a phase. The snapshot schedule is part of the command (evaluation moves the global RNG state);
  the same commands rebuild the same weights; the manifest embeds the ``--init`` build's manifest.
* Without ``--phases`` (the previous base): one run stopped at the first snapshot whose selection score reaches
  ``--target`` (``--steps``, ``--lr``); its errors were imprecise spectra shared by every seed of a prompt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from genalign.tones.pipeline import (FRAME, FRAMES, GAIN, HOP, K_HI, K_LO, KEEP, STRIDES, conditioning,  # noqa: E402
                                    make_pipeline, mdct_encode)


def parse_phases(text: str):
    """``"2250:2e-3:0,1500:1e-3:0.4"`` → [(2250, 0.002, 0.0), (1500, 0.001, 0.4)]; one-line errors otherwise."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            steps, lr, noise = int(parts[0]), float(parts[1]), float(parts[2])
            drop = float(parts[3]) if len(parts) == 4 else 0.0
        except (IndexError, ValueError):
            raise SystemExit(f"--phases: '{item}' is not steps:lr:label_noise[:attribute_drop] "
                             "(e.g. 2000:1e-3:0.4 or 1500:1e-3:0.35:0.3)") from None
        if len(parts) > 4 or steps <= 0 or lr <= 0 or not 0 <= noise < 1 or not 0 <= drop < 1:
            raise SystemExit(f"--phases: '{item}' needs steps > 0, lr > 0, 0 <= label_noise < 1 and "
                             "0 <= attribute_drop < 1")
        out.append((steps, lr, noise, drop))
    return out


def noisy_captions(labels, fraction: float, seed: int, drop: float = 0.0):
    """Captions with a seeded ``fraction`` of the clips relabelled with the root a tritone away (kind, timbre and
    articulation kept). The root's index moves by ±6, so a label's split (index sum mod 6) is unchanged. With
    ``drop`` > 0 each caption also leaves out its timbre and, independently, its articulation with probability
    ``drop`` (its own seeded stream: ``drop`` = 0 gives the captions of the build without it), so that the model
    learns what to play when a prompt does not say (e.g. "a C note, bright": either articulation)."""
    from genalign.tones.data import make_caption

    flip = (torch.rand(len(labels), generator=torch.Generator().manual_seed(seed)) < fraction).tolist()
    keep = torch.ones(len(labels), 2, dtype=torch.bool)
    if drop > 0:
        keep = torch.rand(len(labels), 2, generator=torch.Generator().manual_seed(seed + 13)) >= drop
    return [make_caption((lab.root + 6) % 12 if f else lab.root, lab.kind, lab.timbre if k[0] else None,
                         lab.articulation if k[1] else None) for lab, f, k in zip(labels, flip, keep.tolist())]


def train(pipe, lat, caps, steps, batch, lr, log, t_min=0.0, t_max=1.0, every=0, callback=None):
    """AdamW on the DiT + projection; ``callback(step)`` every ``every`` steps (True stops training)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    dit, proj = pipe.transformer, pipe.projection_model
    params = list(dit.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rope = get_1d_rotary_pos_embed(pipe.rotary_embed_dim, lat.shape[-1] + 1, use_real=True, repeat_interleave_real=False)
    g = torch.Generator().manual_seed(1)
    losses = []
    t0 = time.process_time()
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, (step + 1) / 30)
        idx = torch.randint(len(lat), (batch,), generator=g)
        x0 = lat[idx]
        t = t_min + (t_max - t_min) * torch.rand(batch, generator=g)  # model time; σ = tan(tπ/2)
        eps = torch.randn(x0.shape, generator=g)
        c, s = torch.cos(t * math.pi / 2)[:, None, None], torch.sin(t * math.pi / 2)[:, None, None]
        enc, glob = conditioning(pipe, [caps[i] for i in idx.tolist()])
        drop = (torch.rand(batch, generator=g) < 0.1)[:, None, None]
        enc = torch.where(drop, torch.zeros_like(enc), enc)
        v = dit(c * x0 + s * eps, t, encoder_hidden_states=enc, global_hidden_states=glob, rotary_embedding=rope,
                return_dict=False)[0]
        loss = ((v - (c * eps - s * x0)) ** 2).mean()  # stable-audio-tools v-objective
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step} loss {sum(losses[-25:]) / len(losses[-25:]):.4f} cpu {time.process_time() - t0:.0f}s")
        if callback is not None and every and ((step + 1) % every == 0 or step == steps - 1) and callback(step + 1):
            break
    return losses, time.process_time() - t0


def evaluate(path: str, prompts, seeds, num_steps: int, guidance: float):
    from genalign.config import ModelConfig, SamplerConfig
    from genalign.models.stable_audio import StableAudioGenerator
    from genalign.tones.rewards import tone_correctness_score
    from genalign.tones.data import prompt_notes

    cfg = ModelConfig(family="stable_audio", path=path, seconds=1.0)  # the latent spans 1.024 s
    cfg.lora.rank = 0
    gen = StableAudioGenerator.load(cfg)
    scfg = SamplerConfig(num_steps=num_steps, guidance_scale=guidance, kernel="ddim", eta=1.0)
    ps = [p for p in prompts for _ in seeds]
    ss = [s for _ in prompts for s in seeds]
    with torch.no_grad():
        ro = gen.rollout(ps, ss, scfg)
    return float(torch.nanmean(tone_correctness_score(ro.samples, prompt_notes(ps)))), ro


def load_init(pipe, folder: str) -> None:
    """The trained parts (DiT, projection model) of a saved tones pipeline; its frozen T5 must be this build's."""
    from safetensors.torch import load_file

    def weights(sub):
        path = os.path.join(folder, sub, "diffusion_pytorch_model.safetensors")
        if sub == "text_encoder":
            path = os.path.join(folder, sub, "model.safetensors")
        if not os.path.exists(path):
            raise SystemExit(f"--init: {folder} is not a tones pipeline folder (no {sub}/ weights)")
        return load_file(path)

    t5 = weights("text_encoder")
    if any(not torch.equal(v, t5[k]) for k, v in pipe.text_encoder.state_dict().items() if k in t5):
        raise SystemExit(f"--init: {folder}'s frozen T5 differs from this build's (build it with the same --seed)")
    pipe.transformer.load_state_dict(weights("transformer"))
    pipe.projection_model.load_state_dict(weights("projection_model"))


def init_manifest(folder: str):
    """The --init folder's own manifest (how the starting weights were built), so the provenance is complete."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path):
        return {"path": folder, "manifest": None}
    with open(path) as f:
        m = json.load(f)
    return {"path": folder, "manifest": {k: m[k] for k in ("build", "phases", "steps_trained", "cpu_seconds", "selection",
                                                             "eval") if k in m}}


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def save(pipe, out):
    """``save_pretrained`` (safetensors), with the analytic VAE stored as float16 (it loads into float32; its MDCT
    rows lose ~5e-4 relative precision, measured in the manifest) to keep the asset small."""
    from safetensors.torch import load_file, save_file

    pipe.save_pretrained(out, safe_serialization=True)
    f = os.path.join(out, "vae", "diffusion_pytorch_model.safetensors")
    save_file({k: v.half().contiguous() for k, v in load_file(f).items()}, f, metadata={"format": "pt"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/tones/pipeline")
    ap.add_argument("--steps", type=int, default=4000, help="most training steps")
    ap.add_argument("--clips", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--t-min", type=float, default=0.15, help="training model time range (σ = tan(tπ/2)); the "
                    "sampler's σ ∈ [0.3, 500] is t ∈ [0.19, 1)")
    ap.add_argument("--t-max", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--select-every", type=int, default=250, help="evaluate a snapshot every this many steps")
    ap.add_argument("--target", type=float, default=0.55, help="stop at the first snapshot whose selection score "
                    "(held-out prompts, selection seeds 500/501, not the bench's 1000..) reaches this")
    ap.add_argument("--init", default=None, help="start from this tones pipeline folder's DiT and projection weights "
                    "(e.g. a clean build, then the noisy phase alone; the frozen T5 must match: same --seed)")
    ap.add_argument("--phases", default=None, help="comma-separated steps:lr:label_noise phases instead of "
                    "--steps/--lr/--target (module docstring; the shipped base's command is there)")
    args = ap.parse_args()
    phases = parse_phases(args.phases) if args.phases else None
    torch.set_num_threads(1)
    from genalign.tones.data import make_dataset, prompt_notes, tone_prompts
    from genalign.tones.rewards import tone_correctness_score

    log = lambda m: print(f"[tones-pipeline] {m}", flush=True)  # noqa: E731
    t0 = time.process_time()
    wav, labels = make_dataset(args.clips, "train", seed=args.seed + 11)
    lat = mdct_encode(wav)
    log(f"{len(labels)} clips, latents {tuple(lat.shape)}, latent std {float(lat.std()):.3f}")
    pipe = make_pipeline(os.path.join(args.out, "_tok_build"), args.seed)
    if args.init:
        load_init(pipe, args.init)
        log(f"DiT and projection weights from {args.init}")
    with torch.no_grad():  # the Oobleck encoder (real class) computes the same latents as mdct_encode
        enc = pipe.vae.encode(wav[:4]).latent_dist.mean
        dec = pipe.vae.decode(lat[:64]).sample[..., :wav.shape[-1]]
    enc_err = float((enc - lat[:4, :, :enc.shape[-1]]).abs().max())
    ceiling = float(torch.nanmean(tone_correctness_score(dec, prompt_notes([lab.caption for lab in labels[:64]]))))
    log(f"Oobleck encoder vs torch MDCT max |diff| {enc_err:.2e}; tone_correctness of decoded real clips {ceiling:.3f}")
    eval_prompts = tone_prompts("eval")[::3]
    trajectory = []
    done = [0]

    def select(step):
        save(pipe, args.out)
        score, _ = evaluate(args.out, eval_prompts, [500, 501], args.eval_steps, args.guidance)
        trajectory.append({"step": done[0] + step, "selection_tone_correctness": score})
        log(f"step {done[0] + step}: selection tone_correctness {score:.3f}")
        return phases is None and score >= args.target

    phase_log = []
    if phases is None:
        losses, train_cpu = train(pipe, lat, [lab.caption for lab in labels], args.steps, args.batch, args.lr, log,
                                  args.t_min, args.t_max, args.select_every, select)
    else:
        losses, train_cpu = [], 0.0
        for k, (steps, lr, noise, drop) in enumerate(phases):
            caps = noisy_captions(labels, noise, args.seed + 7, drop)
            log(f"phase {k}: {steps} steps, lr {lr:g}, label noise {noise:g}, attribute drop {drop:g} "
                f"({sum(c != lab.caption for c, lab in zip(caps, labels))} of {len(caps)} captions changed)")
            ls, cpu = train(pipe, lat, caps, steps, args.batch, lr, log, args.t_min, args.t_max, args.select_every,
                            select)
            losses, train_cpu, done[0] = losses + ls, train_cpu + cpu, done[0] + steps
            phase_log.append({"steps": steps, "lr": lr, "label_noise": noise, "attribute_drop": drop,
                              "loss_last_25": sum(ls[-25:]) / 25})
    import shutil

    shutil.rmtree(os.path.join(args.out, "_tok_build"), ignore_errors=True)
    seeds = [1000, 1001]
    score, _ = evaluate(args.out, eval_prompts, seeds, args.eval_steps, args.guidance)
    with torch.no_grad():
        from diffusers import AutoencoderOobleck

        vae16 = AutoencoderOobleck.from_pretrained(os.path.join(args.out, "vae"))
        dec16 = vae16.decode(lat[:64]).sample[..., :wav.shape[-1]]
    ceiling16 = float(torch.nanmean(tone_correctness_score(dec16, prompt_notes([lab.caption for lab in labels[:64]]))))
    log(f"held-out tone_correctness {score:.3f} ({len(eval_prompts)} prompts x {len(seeds)} seeds)")
    files = {}
    for root, _, names in os.walk(args.out):
        for n in sorted(names):
            p = os.path.join(root, n)
            if n != "manifest.json":
                files[os.path.relpath(p, args.out)] = {"bytes": os.path.getsize(p), "sha256": sha(p)}
    manifest = {
        "what": "tones base StableAudioPipeline (real diffusers classes); see scripts/build_tones_pipeline.py",
        "build": vars(args), "threads": 1, "steps_trained": trajectory[-1]["step"] if phases is None else done[0],
        **({"phases": phase_log} if phases else {}),
        **({"init": init_manifest(args.init)} if args.init else {}),
        "rebuild": ("the build recorded in init.manifest.build (into init.path), then " if args.init else "") +
                   "the same command (--select-every included); training is seeded" + (
                       " and stops at the first snapshot reaching --target" if phases is None else ""),
        "codec": {"kind": "analytic two-stage MDCT AutoencoderOobleck", "strides": list(STRIDES), "hop": HOP,
                  "frame": FRAME, "coefficients": [K_LO, K_HI], "latent_channels": KEEP, "latent_frames": FRAMES,
                  "gain": GAIN, "band_hz": [K_LO * 8000 / (2 * HOP), K_HI * 8000 / (2 * HOP)],
                  "encoder_vs_mdct_max_abs": enc_err, "stored_dtype": "float16",
                  "tone_correctness_of_decoded_real_clips": ceiling,
                  "tone_correctness_of_decoded_real_clips_float16_vae": ceiling16},
        "dit_params": sum(p.numel() for p in pipe.transformer.parameters()),
        "loss": {"first_25": sum(losses[:25]) / 25, "last_25": sum(losses[-25:]) / 25},
        "cpu_seconds": {"train_and_selection": train_cpu, "total": time.process_time() - t0},
        "selection": {"prompts": "tone_prompts('eval')[::3]", "seeds": [500, 501], "trajectory": trajectory},
        "eval": {"prompts": "tone_prompts('eval')[::3]", "n_prompts": len(eval_prompts), "seeds": seeds,
                 "sampler": {"kernel": "ddim", "eta": 1.0, "num_steps": args.eval_steps,
                             "guidance_scale": args.guidance}, "tone_correctness": score},
        "files": files,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    log(f"wrote {args.out} ({sum(v['bytes'] for v in files.values()) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
