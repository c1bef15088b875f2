"""Where the tones world's FAD to the staccato exemplars can go, and whether it measures articulation at all.

    python scripts/bench/tones_fad_floor.py [--pipeline assets/tones/pipeline] [--cfg 1 1.5 3] [--floors 1e-6 1e-2]

Prints, per toy-CLAP encoder, the Fréchet distance of its embeddings to the staccato exemplars
(assets/tones/exemplars/staccato.safetensors) of:
* the shipped real clips (all / staccato / legato ones) and the real clips after the analytic codec's encode →
  decode (the floor of anything the pipeline decodes);
* the base sampled on the open-articulation held-out prompts (36 × 4 seeds, the recipes' deterministic 10-step
  sampler) at each CFG scale, with its correctness and articulation proxies;
* the validity check: the base prompted for staccato vs for legato (36 captions of eval.txt each, 4 seeds, the
  recipe's CFG). A distance to *staccato* exemplars that measures articulation puts the staccato-prompted set nearer.

Encoders: the shipped toy CLAP, then (``--floors``) one CLAP per pitch-feature floor, trained in-process exactly as
scripts/build_tones_assets.py trains the shipped one except for the floor (about 25 s each), with the real set and
the exemplars re-embedded by it (the clips are the same: they are seeded).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def clap_variant(pitch_floor: float):
    """A toy CLAP built as the shipped one (genalign.tones.build defaults) with another pitch-feature floor."""
    from genalign.tones.build import BuildConfig, train_build_clap

    return train_build_clap(BuildConfig(pitch_floor=pitch_floor))["model"].eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default=os.path.join(REPO, "assets", "tones", "pipeline"))
    ap.add_argument("--cfg", type=float, nargs="*", default=[1.0, 1.5, 3.0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--floors", type=float, nargs="*", default=[],
                    help="also train a toy CLAP with each of these pitch-feature floors and report with it")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffusers import AutoencoderOobleck
    from tones_learning import generator, samples_of

    from genalign.config import load_config
    from genalign.io import read_prompts
    from genalign.registry import REWARDS
    from genalign.rewards.stats import frechet_distance
    from genalign.tones.assets import load_reference
    from genalign.tones.clap import load_clap
    from genalign.tones.pipeline import codec_round_trip

    wav, labels, _ = load_reference()
    ex_wav, _, _ = load_reference(path=os.path.join(REPO, "assets", "tones", "exemplars", "staccato.safetensors"))
    wav, ex_wav = wav.float(), ex_wav.float()
    st = torch.tensor([lab.articulation == "staccato" for lab in labels])
    vae = AutoencoderOobleck.from_pretrained(os.path.join(args.pipeline, "vae"))
    codec = codec_round_trip(vae, wav)
    correct, onset = REWARDS.get("tone_correctness")(), REWARDS.get("onset_sharpness")()
    sets = []  # (label, waveforms, prompts)
    for g in args.cfg:
        cfg = load_config(os.path.join(REPO, "configs", "toy", "tones_dragon_fad.yaml"),
                          [f"model.path={args.pipeline}", f"sampler.guidance_scale={g}"])
        prompts = read_prompts(os.path.join(REPO, cfg.data.eval_prompts))
        x, P, _ = samples_of(generator(cfg, None), cfg.sampler, prompts, args.seeds)
        sets.append((f"base, CFG {g:g}, {len(prompts)} open-articulation prompts x {args.seeds} seeds", x, P))
    cfg = load_config(os.path.join(REPO, "configs", "toy", "tones_dragon_fad.yaml"), [f"model.path={args.pipeline}"])
    gen = generator(cfg, None)
    full = read_prompts(os.path.join(REPO, "assets", "tones", "prompts", "eval.txt"))
    for art in ("staccato", "legato"):
        prompts = [p for p in full if art in p][:36]
        x, P, _ = samples_of(gen, cfg.sampler, prompts, args.seeds)
        sets.append((f"base, CFG {cfg.sampler.guidance_scale:g}, {len(prompts)} {art} prompts x {args.seeds} seeds", x, P))
    for label, x, P in sets:
        print(f"{label}: correctness {float(torch.nanmean(correct(x, P))):.3f}, onset {float(onset(x, P).mean()):.3f}")

    encoders = [("shipped toy CLAP (pitch floor "
                 f"{load_clap().config['pitch_floor']:g})", load_clap())]
    encoders += [(f"toy CLAP trained with pitch floor {f:g}", clap_variant(f)) for f in args.floors]
    for name, clap in encoders:
        with torch.no_grad():
            emb = lambda w: clap.embed_audio(w).double()  # noqa: E731
            ex = emb(ex_wav)
            fd = lambda w: float(frechet_distance(emb(w), ex, 1e-4))  # noqa: E731
            print(f"\n{name}: FAD to the staccato exemplars")
            print(f"  real clips: all {fd(wav):.2f}, staccato ones {fd(wav[st]):.2f}, legato ones {fd(wav[~st]):.2f} "
                  f"({len(labels)} clips, {int(st.sum())} staccato); through the codec {fd(codec):.2f}")
            for label, x, _ in sets:
                print(f"  {label}: {fd(x):.2f}")


if __name__ == "__main__":
    main()
