"""The embedded ``tones`` toy world (text-to-music): procedural clips and captions (:mod:`.data`), signal rewards
(:mod:`.rewards`, registered in ``REWARDS``), a small joint text–audio encoder (:mod:`.clap`, registered as
``encoder: tones``) and its shipped assets (:mod:`.assets`, rebuilt by ``scripts/build_tones_assets.py``)."""

from .data import SAMPLE_RATE, ToneLabel, make_clips, parse_prompt, tone_prompts  # noqa: F401
