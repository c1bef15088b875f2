"""Adv-GRPO's PickScore variant (arXiv 2511.20256, ``showlab/Adv-GRPO`` ``scripts/train_sd3_fast_pickscore.py``;
METHODS.md §7): a preference model trained during the run. Registered as ``adversarial_pickscore``.

* The reward is PickScore (a CLIP model): ``R(x, prompt) = logit_scale.exp() · cos(E_img(x), E_txt(prompt))``
  (divided by ``divide_by``), with the same torch preprocessing as the ``pickscore`` reward.
* The trained part ``reward_model`` is the last ``trainable_blocks`` (default 1) transformer blocks of the vision
  tower; everything else stays frozen. Its forward starts from the frozen tower's hidden state before those
  blocks, so only the tail runs with gradients (and through the part's module, so distributed hooks fire).
* Loss: PickScore's pairwise cross-entropy (Kirstain et al., arXiv 2305.01569; the reference's ``CLIPCriterion``
  without in-batch negatives), reference preferred (label 1), generation not (label 0), one pair per generated
  sample and its prompt: ``CE([R(ref), R(gen)], 0) = softplus(R(gen) − R(ref))`` on undivided scores.
* Default schedule ``update_when: refs_below_gens``: the model trains, and the generator skips, whenever the last
  scored batch had mean R(references) < mean R(generations) (see
  :class:`~genalign.rewards.adversarial.ScheduledReward`).
  Default lr 5e-6 as the reference; betas and weight decay are the run's (``train.parts.reward_model``
  overrides).
* References: an image folder (paired at random) or a ``.jsonl`` of ``{prompt, references}`` (paired with a
  reference of the same prompt); a sample's metadata ``references`` wins. Pre-computed tokens cannot be used.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.seeding import torch_generator
from ..errors import ConfigError
from ..registry import REWARDS
from .adversarial import ScheduledReward
from .clip import HFClip, check_images
from .token_encoders import References

PART = "reward_model"
_DECIDE = 13


class VisionTail(nn.Module):
    """The last blocks of a CLIP vision tower: hidden states before them -> hidden states after them."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        params = inspect.signature(type(self.layers[0]).forward).parameters
        self._causal = "causal_attention_mask" in params  # transformers < 5 takes it positionally

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            out = layer(h, None, None) if self._causal else layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
        return h


@REWARDS.register("adversarial_pickscore")
class AdversarialPickScoreReward(ScheduledReward):
    """PickScore with its last vision block(s) trained against references (pairwise cross-entropy).

    Args:
        model / processor / dtype: the CLIP model and its tokenizer + preprocessing (as the ``pickscore`` reward).
        reference / reference_kind: an image folder or a ``.jsonl`` of ``{prompt, references}``.
        trainable_blocks: how many final vision blocks train (1). divide_by: score scale of the reward (1).
        lr, betas, weight_decay, max_grad_norm: the part's optimiser defaults (5e-6; None = the run's).
        update_when, disc_steps_per_gen, disc_on_gen_iterations: the schedule (default refs_below_gens).
        seed: seeds the reference draws of the refs_below_gens decision.
    """

    modality = "image"
    differentiable = False
    part = PART

    def __init__(self, model: str = "yuvalkirstain/PickScore_v1",
                 processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", reference: Any = None,
                 reference_kind: str = "auto", trainable_blocks: int = 1, divide_by: float = 1.0,
                 lr: float = 5e-6, betas: Optional[Sequence[float]] = None, weight_decay: Optional[float] = None,
                 max_grad_norm: Optional[float] = None, update_when: str = "refs_below_gens",
                 disc_steps_per_gen: int = 0, disc_on_gen_iterations: bool = False, dtype: str = "float32",
                 seed: int = 0):
        super().__init__()
        self._init_schedule(disc_steps_per_gen, disc_on_gen_iterations, update_when)
        if int(trainable_blocks) != trainable_blocks or trainable_blocks < 1:
            raise ConfigError(f"reward 'adversarial_pickscore': trainable_blocks must be an integer >= 1, "
                              f"got {trainable_blocks}")
        if lr <= 0 or divide_by <= 0:
            raise ConfigError(f"reward 'adversarial_pickscore': lr and divide_by must be > 0, got {lr}, {divide_by}")
        if reference is not None and References._resolve(str(reference), reference_kind) == "embeddings":
            raise ConfigError(f"reward 'adversarial_pickscore': reference '{reference}' is a token file; give an image "
                              f"folder or a .jsonl of prompt references (valid kinds: images, per_prompt)")
        self.references = References(reference, reference_kind)
        self.clip = HFClip(model, processor, dtype)
        self.blocks, self.divide_by, self.seed = int(trainable_blocks), float(divide_by), int(seed)
        self.optim = dict(lr=float(lr), betas=None if betas is None else tuple(float(b) for b in betas),
                          weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        self.tail: Optional[VisionTail] = None

    def to(self, device):
        super().to(device)
        self.clip.to(device)
        return self

    def _load(self) -> VisionTail:
        if self.tail is None:
            self.clip.load()
            layers = list(self.clip.model.vision_model.encoder.layers)
            if self.blocks > len(layers):
                raise ConfigError(f"reward 'adversarial_pickscore': trainable_blocks is {self.blocks} but the vision "
                                  f"tower has {len(layers)} blocks")
            self.tail = VisionTail(layers[-self.blocks:]).requires_grad_(True)  # shares the CLIP model's blocks
        return self.tail

    def parts(self) -> Dict[str, Any]:
        from ..core.phases import PartSpec

        o = self.optim
        return {PART: PartSpec(self._load(), lr=o["lr"], betas=o["betas"], weight_decay=o["weight_decay"],
                               max_grad_norm=o["max_grad_norm"])}

    # ------------------------------------------------------------------------------------------ scores
    def _scores(self, images: torch.Tensor, prompts: Sequence[str], tail: Optional[nn.Module] = None) -> torch.Tensor:
        """Undivided PickScore ``logit_scale.exp()·cos``; with ``tail`` the last blocks run through it (with
        gradients), the rest of the model without."""
        check_images(self.name, images)
        self._load()
        clip, m = self.clip, self.clip.model
        vm = m.vision_model
        with torch.no_grad():
            text = clip.text_embeds(prompts, normalize=True)
            pix = clip.preprocess(images.to(clip.device, clip.dtype))
            if tail is None:
                pooled = vm(pixel_values=pix).pooler_output
            else:
                h = vm(pixel_values=pix, output_hidden_states=True).hidden_states[-(self.blocks + 1)]
        if tail is not None:
            pooled = vm.post_layernorm(tail(h)[:, 0])
        img = F.normalize(m.visual_projection(pooled), dim=-1)
        return m.logit_scale.exp().detach() * (img * text).sum(-1)

    def score(self, samples, prompts, metadata):
        r = self._scores(samples, prompts).float()
        if self.update_when == "refs_below_gens":
            g = torch_generator(self.seed, self.iteration, _DECIDE)  # the same on every process
            refs = self.references.images_of(self.references.pick_all(g, 1, prompts, metadata))
            self._last = (float(self._scores(refs, prompts).double().mean()), float(r.double().mean()))
        return (r / self.divide_by).cpu()

    # ------------------------------------------------------------------------------------------ training
    def losses(self, view, batch, items):
        ro = batch.rollout
        idx = torch.as_tensor(items, dtype=torch.long).flatten().tolist()
        gens = self._sample_generators(view, ro, idx)  # split-independent draws (the samples' own seeds)
        prompts = [ro.prompts[i] for i in idx]
        meta = [ro.metadata[i] for i in idx] if getattr(ro, "metadata", None) else None
        refs = self.references.images_of(self.references.pick_all(gens, 1, prompts, meta))  # one pair per sample
        gens = ro.samples[idx].detach().float().cpu()
        h, w = gens.shape[-2:]
        if refs.shape[-2:] != (h, w):
            refs = F.interpolate(refs, size=(h, w), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        s = self._scores(torch.cat([refs, gens]), list(prompts) * 2, tail=view.module(PART))
        loss, out = pairwise_preference_loss(s[: len(idx)], s[len(idx):])
        self._record(view, s[: len(idx)].detach(), s[len(idx):].detach())
        yield loss, out


def pairwise_preference_loss(s_ref: torch.Tensor, s_gen: torch.Tensor):
    """PickScore's pairwise cross-entropy (arXiv 2305.01569), reference preferred:
    ``mean CE([s_ref, s_gen], 0) = mean softplus(s_gen − s_ref)``. Returns (loss, stats)."""
    logits = torch.stack([s_ref, s_gen], -1)
    loss = F.cross_entropy(logits.float(), torch.zeros(len(s_ref), dtype=torch.long, device=logits.device))
    with torch.no_grad():
        stats = {"disc/loss": float(loss), "disc/acc": float((s_ref > s_gen).float().mean()),
                 "disc/reward_gap": float((s_ref - s_gen).mean()), "disc/reward_ref": float(s_ref.mean()),
                 "disc/reward_gen": float(s_gen.mean())}
    return loss, stats
