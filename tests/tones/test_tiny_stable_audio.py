"""A tiny StableAudioPipeline built offline from diffusers' test configs: saved, reloaded through
``from_pretrained`` (the path a hub id takes) and run through the stock ``__call__``."""

import pytest
import torch
from diffusers import DiffusionPipeline

from genalign.testing.tiny import build_tiny_stable_audio


@pytest.fixture(scope="module")
def tiny_stable_audio(tmp_path_factory):
    return build_tiny_stable_audio(str(tmp_path_factory.mktemp("tiny_stable_audio")))


def test_reloads_with_the_released_scheduler(tiny_stable_audio):
    pipe = DiffusionPipeline.from_pretrained(tiny_stable_audio)
    assert type(pipe).__name__ == "StableAudioPipeline"
    assert type(pipe.transformer).__name__ == "StableAudioDiTModel" and type(pipe.vae).__name__ == "AutoencoderOobleck"
    assert type(pipe.text_encoder).__name__ == "T5EncoderModel"
    assert type(pipe.tokenizer).__name__.startswith("T5Tokenizer")  # transformers 5 names the fast one T5Tokenizer
    sc = pipe.scheduler
    assert type(sc).__name__ == "CosineDPMSolverMultistepScheduler"
    assert (sc.config.prediction_type, sc.config.sigma_schedule, sc.config.sigma_min, sc.config.sigma_max) == \
        ("v_prediction", "exponential", 0.3, 500)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchsde's Brownian-interval float tolerance warnings
def test_stock_call_runs_and_is_seeded(tiny_stable_audio):
    pipe = DiffusionPipeline.from_pretrained(tiny_stable_audio)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a C major chord, bright, staccato", "a D note, sine, legato"]

    def run(seed):
        return pipe(prompts, num_inference_steps=3, audio_end_in_s=1.5, guidance_scale=7.0,
                    generator=torch.Generator().manual_seed(seed)).audios

    a = run(0)
    # latent length 4 × VAE hop 2 = 8 samples at sampling_rate 4, cropped to 1.5 s = 6 samples; stereo
    assert a.shape == (2, 2, 6) and torch.isfinite(a).all()
    assert torch.equal(a, run(0)) and not torch.equal(a, run(1))
    max_s = pipe.transformer.config.sample_size * pipe.vae.hop_length / pipe.vae.config.sampling_rate
    assert max_s == 2.0
