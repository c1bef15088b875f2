"""The embedded ``digits`` toy world: data (:mod:`.data`), shipped assets (:mod:`.assets`), the digit classifier
(:mod:`.classifier`), rewards (:mod:`.rewards`, registered in ``REWARDS``), set metrics (:mod:`.metrics`) and the
asset builder (:mod:`.build`, run by ``scripts/build_toy_assets.py``)."""

from .assets import asset_path, load_classifier, load_eps_pipeline, load_flow_pipeline  # noqa: F401
from .data import digit_prompts, parse_digit  # noqa: F401
