"""Exemplar sets for DRAGON's distributional rewards on the toy world (seconds, deterministic).

    python scripts/build_toy_exemplars.py     # -> assets/toy/exemplars/thick_digits.safetensors and thick_digits/

``thick_digits``: the held-out real digits with thick strokes (ink above data.THICK_INK) — a style the base model
under-represents — as toy-classifier features (the ``digits`` encoder), the format ExemplarSet reads
(``{"embeddings": (M, D)}``), and the same digits as 8-bit PNGs in ``thick_digits/`` — the image-folder reference
of the adversarial reward (configs/toy/adv_grpo.yaml), whose discriminator needs patch tokens, not pooled features.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    from safetensors.torch import save_file

    from genalign.toy import data as D
    from genalign.toy.assets import assets_root
    from genalign.toy.metrics import digit_features

    x, _ = D.load_split("heldout")
    thick = x[D.ink(x) > D.THICK_INK]
    out = os.path.join(str(assets_root()), "toy", "exemplars", "thick_digits.safetensors")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    save_file({"embeddings": digit_features(thick).detach().float().contiguous()}, out)
    print(f"wrote {out}: {thick.shape[0]} thick-stroke digits")
    from genalign.rewards.encoders import encode_png

    folder = os.path.join(os.path.dirname(out), "thick_digits")
    os.makedirs(folder, exist_ok=True)
    for i, im in enumerate(thick):
        with open(os.path.join(folder, f"{i:03d}.png"), "wb") as f:
            f.write(encode_png(im))
    print(f"wrote {folder}/: {thick.shape[0]} PNGs")


if __name__ == "__main__":
    main()
