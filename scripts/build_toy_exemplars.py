"""Exemplar sets for DRAGON's distributional rewards on the toy world (seconds, deterministic).

    python scripts/build_toy_exemplars.py     # -> assets/toy/exemplars/thick_digits.safetensors, thick_digits/,
                                              #    thick_digits_by_prompt.jsonl

``thick_digits``: the held-out real digits with thick strokes (ink above data.THICK_INK) — a style the base model
under-represents — as toy-classifier features (the ``digits`` encoder), the format ExemplarSet reads
(``{"embeddings": (M, D)}``), and the same digits as 8-bit PNGs in ``thick_digits/`` — the image-folder reference
of the adversarial reward (configs/toy/adv_grpo.yaml), whose discriminator needs patch tokens, not pooled features;
``thick_digits_by_prompt.jsonl``: the same PNGs as per-prompt reference sets (``{"prompt": "a handwritten digit
seven", "references": ["thick_digits/…png", …]}``, one line per digit; the adversarial reward's per-prompt
references, configs/toy/adv_grpo_only.yaml).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    from safetensors.torch import save_file

    from genalign.toy import data as D
    from genalign.toy.assets import assets_root
    from genalign.toy.metrics import digit_features

    x, y = D.load_split("heldout")
    keep = D.ink(x) > D.THICK_INK
    thick, labels = x[keep], y[keep]
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
    import json

    by_prompt = os.path.join(os.path.dirname(out), "thick_digits_by_prompt.jsonl")
    with open(by_prompt, "w") as f:
        for d in range(10):
            refs = [f"thick_digits/{i:03d}.png" for i in range(len(labels)) if int(labels[i]) == d]
            f.write(json.dumps({"prompt": D.make_prompt(d), "references": refs}) + "\n")
    print(f"wrote {by_prompt}: per-prompt reference sets of {torch_counts(labels)}")


def torch_counts(labels):
    return ", ".join(f"{d}: {int((labels == d).sum())}" for d in range(10))


if __name__ == "__main__":
    main()
