"""Build the tiny offline GUI-grounding policy shipped in ``assets/gui/tiny_vlm/``.

    HF_HUB_OFFLINE=1 python scripts/build_gui_assets.py [--out assets/gui/tiny_vlm] [--steps 1500] [--seed 0]

1. A small byte-level BPE tokenizer (``tokenizers``), digits split one per token, with the Qwen special tokens
   (``<|im_start|>``, ``<|image_pad|>``, ``<|box_start|>``, ...) and a Qwen-style chat template (no system turn).
2. The stock ``Qwen2VLProcessor`` (``Qwen2VLImageProcessor`` with small min/max pixels) around it.
3. A tiny ``Qwen2VLForConditionalGeneration`` built from a config (2 vision blocks, 4 text layers, width 128).
4. Supervised next-token training on synthetic screens (:mod:`genalign.gui.screens`), prompt = the GUI-G²
   prompt, target = the ground-truth box in the model's (resized) frame, until it emits parseable, roughly
   placed boxes. Then a held-out synthetic ScreenSpot-v2 evaluation, written to ``manifest.json``.

Deterministic for a given seed and thread count (torch CPU kernels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from genalign.gui.coords import convert_coords, format_box, resized_size  # noqa: E402
from genalign.gui.data import GUI_G2_PROMPT, build_messages, build_prompt  # noqa: E402
from genalign.gui.screens import COLORS, FIELDS, LABELS, MENUS, PLATFORMS, SHAPES, render_screen  # noqa: E402

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MIN_PIXELS = 28 * 28 * 4
HIDDEN, LAYERS, HEADS = 64, 2, 2  # text width / depth / heads of the tiny policy (head_dim 32)
# Low rope bases: with few rotary pairs, the default 10,000 leaves the M-RoPE width section (the last,
# lowest frequencies) nearly constant across a ~12-token-wide image, i.e. the policy could not tell x apart.
TEXT_ROPE_THETA, VISION_ROPE_THETA = 10.0, 100.0
MAX_PIXELS = 28 * 28 * 40  # 31,360: the synthetic screens (~72-83k px) are downscaled to ~30 visual tokens


def corpus():
    """Text the BPE is trained on: prompts, instructions, answers, chat words."""
    lines = []
    for c in COLORS:
        for words, kind in ((LABELS, "button"), (FIELDS, "field"), (SHAPES, "icon"), (MENUS, "menu")):
            for w in words:
                lines.append(build_prompt(f"the {c} {w} {kind}"))
    lines += ["user", "assistant", "system", "[12,34,56,78]", "(120,340),(560,780)", "[0,1,2,3,4,5,6,7,8,9]"]
    return lines * 3


def build_tokenizer(out_dir: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:], padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(tok):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    ip = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    try:
        from transformers import Qwen2VLVideoProcessor

        vp = Qwen2VLVideoProcessor()
    except ImportError:  # pragma: no cover - older transformers
        vp = None
    return Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=CHAT_TEMPLATE)


def build_model(tok, seed: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = int(math.ceil(len(tok) / 64) * 64)
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=3 * HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=1, max_position_embeddings=1024, rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": TEXT_ROPE_THETA, "mrope_section": [4, 6, 6]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=1, embed_dim=64, hidden_size=HIDDEN, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           rope_parameters={"rope_type": "axial", "rope_theta": VISION_ROPE_THETA}),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model


def make_example(rng: random.Random, processor):
    """One synthetic (screen, instruction, target box) example, processed, with answer-only labels."""
    tok = processor.tokenizer
    platform = rng.choice(list(PLATFORMS))
    w, h, _ = PLATFORMS[platform]
    screen = render_screen(rng, w, h, platform)
    el = rng.choice(screen.elements)
    rsz = resized_size(w, h, MIN_PIXELS, MAX_PIXELS)
    answer = format_box(convert_coords(el.box, "pixel", "resized", (w, h), rsz))
    prompt = processor.apply_chat_template([build_messages(el.instruction)], add_generation_prompt=True,
                                           tokenize=False)[0]
    ex = dict(processor(text=[prompt + answer + "<|im_end|>"], images=[screen.image], return_tensors="pt"))
    labels = ex["input_ids"].clone()
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    head = len(tok.encode("assistant\n", add_special_tokens=False))
    a = int((ex["input_ids"][0] == im_start).nonzero().flatten()[-1]) + 1 + head
    labels[0, :a] = -100
    ex["labels"] = labels
    return ex


def collate(examples, pad_id: int):
    """Right-pad per-token fields; concatenate the flattened image fields."""
    L = max(e["input_ids"].shape[1] for e in examples)
    out = {}
    for k in examples[0]:
        if k in ("pixel_values", "image_grid_thw"):
            out[k] = torch.cat([e[k] for e in examples])
            continue
        fill = {"input_ids": pad_id, "labels": -100}.get(k, 0)
        out[k] = torch.stack([torch.nn.functional.pad(e[k][0], (0, L - e[k].shape[1]), value=fill)
                              for e in examples])
    return out


def evaluate_policy(model, processor, seed: int, screens: int = 10):
    from genalign.gui.data import load_benchmark
    from genalign.gui.evaluate import VLMPredictor, evaluate
    from genalign.gui.screens import write_screenspot

    with tempfile.TemporaryDirectory() as d:
        write_screenspot(d, screens_per_platform=screens, seed=seed)
        samples = load_benchmark("screenspot-v2", d)
        pred = VLMPredictor(model, processor, coord_frame="resized", device="cpu")
        rep = evaluate(samples, pred, batch_size=16, progress=False, benchmark="screenspot-v2", keep_records=False)
    model.train()
    return rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join("assets", "gui", "tiny_vlm"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--pool", type=int, default=2048, help="Distinct training examples (processed once).")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-screens", type=int, default=10, help="Held-out screens per platform.")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    tok = build_tokenizer(args.out)
    processor = build_processor(tok)
    model = build_model(tok, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny Qwen2-VL: {n_params / 1e6:.2f}M parameters, vocab {len(tok)}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    t0 = time.time()
    pool = [make_example(rng, processor) for _ in range(args.pool)]
    print(f"processed {len(pool)} training examples in {time.time() - t0:.0f}s", flush=True)
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")
    order_rng = random.Random(args.seed + 1)
    order = []
    model.train()
    for step in range(args.steps):
        if len(order) < args.batch_size:
            idx = list(range(len(pool)))
            order_rng.shuffle(idx)
            order += idx
        batch = collate([pool[i] for i in order[:args.batch_size]], pad_id)
        del order[:args.batch_size]
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:.0f}s", flush=True)
    model.eval()
    rep = evaluate_policy(model, processor, seed=args.seed + 1000, screens=args.eval_screens)
    print(f"held-out synthetic ScreenSpot-v2: micro {rep['micro_accuracy']:.3f}  macro {rep['macro_accuracy']:.3f}  "
          f"wrong_format {rep['wrong_format']}/{rep['num_samples']}")

    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    manifest = {
        "script": "scripts/build_gui_assets.py", "seed": args.seed, "steps": args.steps,
        "batch_size": args.batch_size, "pool": args.pool, "lr": args.lr, "threads": args.threads, "parameters": n_params,
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "coord_frame": "resized", "prompt": GUI_G2_PROMPT,
        "train_seconds": round(time.time() - t0, 1),
        "heldout": {"benchmark": "synthetic screenspot-v2", "seed": args.seed + 1000,
                    "num_samples": rep["num_samples"], "micro_accuracy": rep["micro_accuracy"],
                    "macro_accuracy": rep["macro_accuracy"], "wrong_format": rep["wrong_format"]},
        "torch": torch.__version__,
    }
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
