"""Where the tones world's FAD to the staccato exemplars can go: reference distances that no fine-tuning changes.

    python scripts/bench/tones_fad_floor.py [--pipeline assets/tones/pipeline] [--cfg 1 1.5 3]

Prints the Fréchet distance of toy-CLAP embeddings to assets/tones/exemplars/staccato.safetensors of: the shipped real
clips (all / staccato / legato ones), the real clips after the analytic codec's encode → decode (the floor of anything
the pipeline decodes), and the base sampled on the open-articulation held-out prompts (36 × 4 seeds, the recipes'
deterministic 10-step sampler) at each CFG scale, with its correctness and articulation proxies.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default=os.path.join(REPO, "assets", "tones", "pipeline"))
    ap.add_argument("--cfg", type=float, nargs="*", default=[1.0, 1.5, 3.0])
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffusers import AutoencoderOobleck
    from tones_learning import Metrics, generator, samples_of

    from genalign.config import load_config
    from genalign.io import read_prompts
    from genalign.rewards.stats import frechet_distance
    from genalign.tones.assets import load_reference
    from genalign.tones.encoders import TonesEncoder
    from genalign.tones.pipeline import mdct_encode

    wav, labels, emb = load_reference()
    _, _, ex = load_reference(path=os.path.join(REPO, "assets", "tones", "exemplars", "staccato.safetensors"))
    st = torch.tensor([lab.articulation == "staccato" for lab in labels])
    fd = lambda a: float(frechet_distance(a, ex, 1e-4))  # noqa: E731
    print(f"real clips -> staccato exemplars: all {fd(emb):.2f}, staccato ones {fd(emb[st]):.2f}, "
          f"legato ones {fd(emb[~st]):.2f}  ({len(labels)} clips, {int(st.sum())} staccato)")
    vae = AutoencoderOobleck.from_pretrained(os.path.join(args.pipeline, "vae"))
    with torch.no_grad():
        dec = vae.decode(mdct_encode(wav)).sample[..., :wav.shape[-1]].clamp(-1, 1)
        print(f"real clips through the codec (encode -> decode) -> staccato exemplars: {fd(TonesEncoder()(dec)):.2f}")
    m = Metrics()
    for g in args.cfg:
        cfg = load_config(os.path.join(REPO, "configs", "toy", "tones_dragon_fad.yaml"),
                          [f"model.path={args.pipeline}", f"sampler.guidance_scale={g}"])
        prompts = read_prompts(os.path.join(REPO, cfg.data.eval_prompts))
        x, P, _ = samples_of(generator(cfg, None), cfg.sampler, prompts, args.seeds)
        r = m(x, P, args.seeds)
        print(f"base, CFG {g:g}, {len(prompts)} open-articulation prompts x {args.seeds} seeds: FAD staccato "
              f"{r['fad_staccato']:.2f}, FAD real {r['fad_real']:.2f}, correctness {r['correctness']:.3f}, "
              f"onset {r['onset']:.3f}, stacc. cos {r['stacc_cos']:.3f}")


if __name__ == "__main__":
    main()
