"""GUI-G² training: a Qwen2-VL / Qwen2.5-VL policy, Gaussian grounding rewards, stock ``trl.GRPOTrainer``.

    accelerate launch -m genalign train configs/gui/gui_g2_qwen25vl_7b.yaml

:func:`run` builds the ScreenSpot-style dataset (ground truth mapped into the model's frame with the
processor's actual min/max pixels), the reward functions of :mod:`genalign.gui.rewards`, a
``GRPOConfig`` with every GRPO field set explicitly (trl's defaults differ from the paper), and hands them
to ``trl.GRPOTrainer`` (LoRA through ``peft_config`` when ``gui.lora_rank > 0``). trl logs each reward
function separately (``rewards/gaussian_point/mean``, ``rewards/gaussian_coverage/mean``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from ..errors import ConfigError, GenalignError
from .config import GuiConfig, gui_config_from


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_policy(g: GuiConfig):
    """Model + processor from ``g.model`` (hub id or path), with the configured resize bounds."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .coords import processor_pixels, set_processor_pixels

    kw: Dict[str, Any] = {"trust_remote_code": g.trust_remote_code}
    if g.revision:
        kw["revision"] = g.revision
    try:
        processor = AutoProcessor.from_pretrained(g.model, **kw)
        mkw = dict(kw, dtype=_dtype(g.dtype))
        if g.attn_implementation:
            mkw["attn_implementation"] = g.attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(g.model, **mkw)
    except (OSError, ValueError) as e:
        raise GenalignError(f"cannot load the policy 'gui.model={g.model}': {str(e).splitlines()[0]}") from None
    cur_min, cur_max, _ = processor_pixels(processor)
    set_processor_pixels(processor, g.min_pixels or cur_min, g.max_pixels or cur_max)
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"  # generation needs left padding
    return model, processor


def _samples(g: GuiConfig, out_dir: str, seed: int, train: bool):
    from .data import load_benchmark
    from .screens import write_screenspot

    data, bench, synth = ((g.train_data, g.train_benchmark, g.synthetic_train_screens) if train
                          else (g.eval_data, g.eval_benchmark, g.synthetic_eval_screens))
    if not data and synth > 0:
        data = os.path.join(out_dir, "synthetic_train" if train else "synthetic_eval")
        write_screenspot(data, screens_per_platform=synth, seed=seed if train else seed + 10_000)
        bench = "screenspot-v2"
    if not data:
        return []
    samples = load_benchmark(bench, data, image_dir=g.image_dir)
    if train and g.max_train_samples > 0:
        samples = samples[: g.max_train_samples]
    return samples


def build_dataset(g: GuiConfig, samples, processor):
    """A ``datasets.Dataset`` with ``prompt`` (conversational), ``image`` (decoded lazily), ``bbox`` (model frame)."""
    from datasets import Dataset, Image

    from .coords import processor_pixels
    from .data import grpo_rows

    if not samples:
        raise ConfigError("the GUI training set is empty; check gui.train_data / gui.synthetic_train_screens")
    min_px, max_px, factor = processor_pixels(processor)
    rows = grpo_rows(samples, min_px, max_px, factor, coord_frame=g.coord_frame, template=g.prompt_template)
    return Dataset.from_list(rows).cast_column("image", Image())


def grpo_args(g: GuiConfig, output_dir: str, seed: int):
    """``trl.GRPOConfig`` of the GUI-G² preset; every GRPO field explicit."""
    import torch
    from trl import GRPOConfig

    on_gpu = torch.cuda.is_available() and not g.use_cpu
    return GRPOConfig(
        output_dir=output_dir,
        seed=seed,
        learning_rate=g.learning_rate,
        num_generations=g.num_generations,
        beta=g.beta,
        epsilon=g.epsilon,
        temperature=g.temperature,
        top_p=g.top_p,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        reward_weights=list(g.reward_weights),
        multi_objective_aggregation="sum_then_normalize",
        num_iterations=g.num_iterations,
        max_completion_length=g.max_completion_length,
        per_device_train_batch_size=g.per_device_train_batch_size,
        gradient_accumulation_steps=g.gradient_accumulation_steps,
        num_train_epochs=g.num_train_epochs,
        max_steps=g.max_steps,
        warmup_steps=g.warmup_steps,
        max_grad_norm=g.max_grad_norm,
        bf16=bool(g.bf16 and on_gpu),
        fp16=False,
        use_cpu=not on_gpu,
        activation_checkpointing=g.gradient_checkpointing,  # transformers 5 name of gradient_checkpointing
        logging_steps=g.logging_steps,
        save_steps=g.save_steps,
        save_strategy="steps" if g.save_steps > 0 else "no",
        report_to=list(g.report_to) if g.report_to != ["none"] else "none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_completions=False,
    )


def build_trainer(cfg, g: GuiConfig = None):
    """Everything up to ``trl.GRPOTrainer(...)``; returns (trainer, processor, g)."""
    from trl import GRPOTrainer

    from .rewards import make_reward_funcs

    g = g or gui_config_from(cfg)
    out_dir = cfg.run.output_dir
    os.makedirs(out_dir, exist_ok=True)
    model, processor = load_policy(g)
    if g.lora_rank == 0 and g.freeze_vision_tower:
        visual = getattr(getattr(model, "model", model), "visual", None) or getattr(model, "visual", None)
        if visual is not None:
            visual.requires_grad_(False)
    peft_config = None
    if g.lora_rank > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=g.lora_rank, lora_alpha=g.lora_alpha, lora_dropout=g.lora_dropout,
                                 target_modules=list(g.lora_target_modules), task_type="CAUSAL_LM")
    dataset = build_dataset(g, _samples(g, out_dir, cfg.train.seed, train=True), processor)
    reward_funcs = make_reward_funcs(g.rewards, bbox_column="bbox", alpha=g.alpha, round_digits=g.round_digits,
                                     eps_inv=g.eps_inv, eps_det=g.eps_det, threshold=g.iou_threshold)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=grpo_args(g, out_dir, cfg.train.seed),
                          train_dataset=dataset, processing_class=processor, peft_config=peft_config)
    return trainer, processor, g


def run(cfg) -> Dict[str, Any]:
    """Train with GRPO on GUI grounding; return a summary (final logged rewards, eval report, paths)."""
    from ..config import save_config
    from ..io import atomic_write_json

    trainer, processor, g = build_trainer(cfg)
    out_dir = cfg.run.output_dir
    save_config(cfg, os.path.join(out_dir, "config.yaml"))
    result = trainer.train()
    history: List[Dict[str, Any]] = [h for h in trainer.state.log_history if any(k.startswith("rewards/") for k in h)]
    summary: Dict[str, Any] = {
        "output_dir": out_dir,
        "global_step": trainer.state.global_step,
        "train_loss": float(result.training_loss) if result.training_loss is not None else None,
        "reward_history": history,
    }
    if g.save_model:
        final = os.path.join(out_dir, "final")
        trainer.save_model(final)  # LoRA adapter (peft layout) or the full model
        processor.save_pretrained(final)
        summary["final_dir"] = final
    eval_samples = _samples(g, out_dir, cfg.train.seed, train=False)
    if eval_samples:
        from .evaluate import VLMPredictor, evaluate, format_table

        model = trainer.model
        if hasattr(model, "merge_and_unload") and g.lora_rank > 0:
            model = model.merge_and_unload()
        pred = VLMPredictor(model, processor, coord_frame=g.coord_frame, device=str(trainer.accelerator.device),
                            template=g.prompt_template)
        report = evaluate(eval_samples, pred, batch_size=g.eval_batch_size, progress=cfg.run.progress,
                          benchmark=g.eval_benchmark, keep_records=False)
        print(format_table(report))
        atomic_write_json(os.path.join(out_dir, "eval_report.json"), report)
        summary["eval"] = {k: report[k] for k in ("micro_accuracy", "macro_accuracy", "wrong_format", "num_samples")}
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
    return summary
