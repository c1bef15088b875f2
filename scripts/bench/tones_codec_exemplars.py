"""Write the tones exemplar set as the pipeline can decode it: each exemplar clip through the codec's encode → decode.

    python scripts/bench/tones_codec_exemplars.py --out runs/exemplars/staccato_codec.safetensors \
        [--exemplars assets/tones/exemplars/staccato.safetensors] [--pipeline assets/tones/pipeline]

A per-song or full-set DRAGON reward measured against *real* exemplars also rewards whatever separates real clips
from decoded ones, which no generator behind this codec can change (the real clips sit at FAD 0.27 from the
staccato exemplars, the same clips through the codec at 0.47: tones_fad_floor.py). Round-tripped exemplars keep the
articulation and drop that gap. The file has the shipped exemplar file's keys (waveforms, label_index, embeddings by
the shipped toy CLAP), so a reward takes it as ``reference:``. Prints the Fréchet distance of the round-tripped set
to the real exemplars.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exemplars", default=os.path.join(REPO, "assets", "tones", "exemplars", "staccato.safetensors"))
    ap.add_argument("--pipeline", default=os.path.join(REPO, "assets", "tones", "pipeline"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffusers import AutoencoderOobleck
    from safetensors import safe_open
    from safetensors.torch import load_file

    from safetensors.torch import save

    from genalign.io import atomic_write_bytes
    from genalign.rewards.stats import frechet_distance
    from genalign.tones.clap import load_clap
    from genalign.tones.pipeline import codec_round_trip

    d = load_file(args.exemplars)
    with safe_open(args.exemplars, "pt") as f:
        meta = dict(f.metadata() or {})
    wav = d["waveforms"].float()
    vae = AutoencoderOobleck.from_pretrained(os.path.join(args.pipeline, "vae"))
    clap = load_clap()
    rt = codec_round_trip(vae, wav)
    with torch.no_grad():
        emb = clap.embed_audio(rt).float()
        real = clap.embed_audio(wav).double()
    meta["what"] = meta.get("what", "exemplars") + ", through the pipeline's codec (encode -> decode)"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tensors = {"waveforms": rt.contiguous(), "label_index": d["label_index"], "embeddings": emb.contiguous()}
    atomic_write_bytes(args.out, save(tensors, metadata=meta))
    print(f"{args.out}: {len(rt)} clips; Fréchet distance to the real exemplars "
          f"{float(frechet_distance(emb.double(), real, 1e-4)):.2f}")


if __name__ == "__main__":
    main()
