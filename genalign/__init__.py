"""genalign: fine-tune visual and audio generative models with rewards, on stock diffusers pipelines."""

__version__ = "0.1.0"
