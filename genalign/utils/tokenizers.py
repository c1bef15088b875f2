"""Tokenizers built offline.

``build_clip_tokenizer(dir)`` writes a genuine CLIP BPE tokenizer (vocab.json + merges.txt, the 49,408-token
vocabulary of OpenAI CLIP) from the merges file that the open_clip package ships
(``bpe_simple_vocab_16e6.txt.gz``), and returns a ``transformers.CLIPTokenizer`` loaded from it. Nothing is
downloaded. Used by tests and by the toy-world asset scripts; real users load their model's own tokenizer.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache


@lru_cache()
def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _open_clip_bpe_path() -> str:
    import open_clip

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"open_clip's BPE merges file is missing at {path}")
    return path


def write_clip_tokenizer_files(out_dir: str, max_length: int = 77) -> str:
    """Write vocab.json, merges.txt and the tokenizer configs of the CLIP BPE tokenizer into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with gzip.open(_open_clip_bpe_path(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]  # as in CLIP's SimpleTokenizer
    merge_pairs = [tuple(m.split()) for m in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(p) for p in merge_pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.write("\n".join(" ".join(p) for p in merge_pairs) + "\n")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            },
            f,
        )
    return out_dir


def build_clip_tokenizer(out_dir: str, max_length: int = 77):
    """A genuine ``transformers.CLIPTokenizer`` built offline from open_clip's merges file."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(out_dir, max_length)
    return CLIPTokenizer.from_pretrained(out_dir)
