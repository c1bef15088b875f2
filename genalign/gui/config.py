"""``gui:`` section of a ``task: gui`` config (GUI-G², METHODS.md §12).

Validated by ``genalign.config.from_dict(GuiConfig, cfg.gui, prefix="gui.")``; the run directory
(``run.output_dir``) and the seed (``train.seed``) come from the top-level :class:`genalign.config.Config`.
Defaults follow the GUI-G²-7B preset (``run_grpo_gaussian.sh``, paper §4.1); trl's own defaults differ
(``beta=0.0``, ``loss_type="dapo"``), so every GRPO field is passed to ``GRPOConfig`` explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..errors import ConfigError, choices
from .coords import FRAMES
from .data import BENCHMARKS, GUI_G2_PROMPT
from .rewards import REWARD_FUNCS


@dataclass
class GuiConfig:
    # --- policy
    model: str = field(default="", metadata={"help": "Hub id or local path of a Qwen2-VL / Qwen2.5-VL model."})
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the model."})
    dtype: str = field(default="bf16", metadata={"help": "Weights dtype: fp32 | bf16 | fp16."})
    attn_implementation: Optional[str] = field(
        default=None, metadata={"help": "transformers attention backend (sdpa | flash_attention_2 | eager)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank (peft); 0 = full fine-tuning (the paper)."})
    lora_alpha: float = field(default=64.0, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Module names that get LoRA adapters (the language model's projections)."})
    freeze_vision_tower: bool = field(
        default=False, metadata={"help": "Freeze the vision encoder in full fine-tuning (not pinned by the paper)."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Gradient checkpointing (paper: on)."})

    # --- data
    train_benchmark: str = field(
        default="screenspot-v2",
        metadata={"help": "Layout of train_data: screenspot | screenspot-v2 | screenspot-pro."})
    train_data: str = field(default="", metadata={"help": "Directory of ScreenSpot-style training json + images."})
    image_dir: Optional[str] = field(default=None, metadata={"help": "Image folder if not the layout's default."})
    synthetic_train_screens: int = field(
        default=0, metadata={"help": "If > 0 and train_data is empty: synthesize this many screens per platform."})
    max_train_samples: int = field(default=0, metadata={"help": "Use the first N training samples (0 = all)."})
    eval_benchmark: str = field(default="screenspot-v2", metadata={"help": "Layout of eval_data."})
    eval_data: str = field(default="", metadata={"help": "Benchmark directory evaluated after training ('' = none)."})
    synthetic_eval_screens: int = field(
        default=0, metadata={"help": "If > 0 and eval_data is empty: synthesize held-out screens per platform."})
    eval_batch_size: int = field(default=8, metadata={"help": "Batch size of the final evaluation."})
    prompt_template: str = field(default=GUI_G2_PROMPT, metadata={"help": "Prompt; {instruction} is filled in."})
    min_pixels: Optional[int] = field(default=3136, metadata={"help": "Processor min_pixels (null = its own)."})
    max_pixels: Optional[int] = field(
        default=12_845_056, metadata={"help": "Processor max_pixels (null = its own); train and eval must match."})
    coord_frame: str = field(
        default="resized",
        metadata={"help": "Frame of the model's coordinates: resized (Qwen2.5-VL) | norm1000 | norm | pixel."})

    # --- rewards
    rewards: List[str] = field(
        default_factory=lambda: ["gaussian_point", "gaussian_coverage"],
        metadata={"help": f"Reward functions: {choices(REWARD_FUNCS)}."})
    reward_weights: List[float] = field(default_factory=lambda: [1.0, 1.0],
                                        metadata={"help": "One weight per reward (paper: nu = gamma = 1)."})
    alpha: float = field(default=0.5, metadata={"help": "Adaptive sigma = alpha * (w, h) (paper: 0.5)."})
    round_digits: Optional[int] = field(default=3, metadata={"help": "Round rewards (reference: 3; null = off)."})
    eps_inv: float = field(default=1e-8, metadata={"help": "Epsilon added to Sigma before inversion (reference)."})
    eps_det: float = field(default=1e-8, metadata={"help": "Epsilon inside sqrt(det Sp det Sg) (reference)."})
    iou_threshold: Optional[float] = field(default=0.5, metadata={"help": "IoU reward threshold (null = raw IoU)."})

    # --- GRPO (trl.GRPOConfig)
    num_generations: int = field(default=8, metadata={"help": "Group size G."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Learning rate."})
    beta: float = field(default=0.04, metadata={"help": "KL coefficient (trl default 0.0; paper 0.04)."})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip range."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of rollouts."})
    loss_type: str = field(default="grpo", metadata={"help": "trl loss_type (trl default dapo; paper grpo)."})
    scale_rewards: str = field(default="group", metadata={"help": "trl scale_rewards: group | batch | none."})
    max_completion_length: int = field(default=256, metadata={"help": "Max generated tokens (32-64 suffice)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Completions per device per step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Gradient accumulation."})
    num_iterations: int = field(default=1, metadata={"help": "Updates per generation batch (mu)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training samples."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after N optimiser steps (-1 = epochs decide)."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    bf16: bool = field(default=True, metadata={"help": "bf16 mixed precision (paper: on; needs a GPU)."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N steps."})
    report_to: List[str] = field(default_factory=lambda: ["none"],
                                 metadata={"help": "trl/transformers trackers: none | tensorboard | wandb."})
    use_cpu: bool = field(default=False, metadata={"help": "Force CPU even when a GPU exists."})
    save_model: bool = field(default=True, metadata={"help": "Save the final policy (or LoRA) to output_dir/final."})


ENUMS = {
    "dtype": ("fp32", "bf16", "fp16"),
    "train_benchmark": BENCHMARKS,
    "eval_benchmark": BENCHMARKS,
    "coord_frame": FRAMES,
    "loss_type": ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
    "scale_rewards": ("group", "batch", "none"),
}


def validate_gui(cfg: GuiConfig) -> GuiConfig:
    """Semantic checks beyond types; raises ConfigError with one line."""
    for key, valid in ENUMS.items():
        v = getattr(cfg, key)
        if v not in valid:
            raise ConfigError(f"'gui.{key}' is '{v}'; valid choices: {choices(valid)}")
    if not cfg.model:
        raise ConfigError("'gui.model' is empty; give a Qwen2-VL / Qwen2.5-VL hub id or local path")
    if not cfg.train_data and cfg.synthetic_train_screens <= 0:
        raise ConfigError("'gui.train_data' is empty; give a ScreenSpot-style directory or gui.synthetic_train_screens")
    for name in cfg.rewards:
        if name not in REWARD_FUNCS:
            raise ConfigError(f"'gui.rewards' has '{name}'; valid choices: {choices(REWARD_FUNCS)}")
    if not cfg.rewards:
        raise ConfigError(f"'gui.rewards' is empty; name at least one of: {choices(REWARD_FUNCS)}")
    if len(cfg.reward_weights) != len(cfg.rewards):
        raise ConfigError(f"'gui.reward_weights' has {len(cfg.reward_weights)} weights for {len(cfg.rewards)} rewards")
    for key in ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations",
                "max_completion_length", "eval_batch_size"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"'gui.{key}' must be > 0, got {getattr(cfg, key)}")
    if cfg.num_generations < 2:
        raise ConfigError(f"'gui.num_generations' must be >= 2 (group advantages), got {cfg.num_generations}")
    if cfg.learning_rate <= 0 or cfg.alpha <= 0 or cfg.temperature <= 0:
        raise ConfigError("'gui.learning_rate', 'gui.alpha' and 'gui.temperature' must be > 0")
    if cfg.lora_rank < 0:
        raise ConfigError(f"'gui.lora_rank' must be >= 0 (0 = full fine-tuning), got {cfg.lora_rank}")
    if cfg.min_pixels is not None and cfg.max_pixels is not None and cfg.min_pixels > cfg.max_pixels:
        raise ConfigError(f"'gui.min_pixels' ({cfg.min_pixels}) exceeds 'gui.max_pixels' ({cfg.max_pixels})")
    if "{instruction}" not in cfg.prompt_template:
        raise ConfigError("'gui.prompt_template' must contain '{instruction}'")
    return cfg


def gui_config_from(cfg) -> GuiConfig:
    """The validated GuiConfig of a top-level :class:`genalign.config.Config`."""
    from ..schema import from_dict

    return validate_gui(from_dict(GuiConfig, cfg.gui, prefix="gui."))
