"""The ``tones`` base text-to-audio pipeline's components: a ``StableAudioPipeline`` of the real diffusers classes
(built here, pretrained by ``scripts/build_tones_pipeline.py``, shipped in assets/tones/pipeline/).

* ``AutoencoderOobleck`` set **analytically**, not trained: training an Oobleck VAE to pitch-accurate
  reconstructions takes hours on a CPU (measured: 3.5 s per batch-16 step at hop 64 on this machine). Its Snake
  activations are made the identity (α = e^-10: x + sin²(αx) ≈ x + 2e-9·x²) and its residual units zero, which
  leaves a linear multirate filter bank; the encoder's strided convolution (kernel 128, stride 64) computes the
  16 lowest MDCT coefficients (sine window, 0–1 kHz: every fundamental and the low harmonics of the tones) of
  each 128-sample frame, the decoder's transposed convolution is the matching MDCT synthesis (TDAC overlap-add).
  Latent: 16 × 125 frames per second of 8 kHz mono; decode = the clip low-passed at 1 kHz (+ the truncation's
  small time-domain aliasing). Scaled by ``GAIN`` so latents have roughly unit scale (σ_data = 1).
* ``T5EncoderModel`` (1 layer, d 32, frozen random, as SAO's T5 is frozen) + a word-level ``T5TokenizerFast``
  over the tones vocabulary; ``StableAudioProjectionModel`` (trained); ``StableAudioDiTModel`` (trained);
  ``CosineDPMSolverMultistepScheduler`` of the released checkpoint (σ 0.3..500, v-prediction, σ_data 1).
"""

from __future__ import annotations

import math

import torch

HOP, FRAME, KEEP = 64, 128, 16  # MDCT hop N, frame 2N, coefficients kept
GAIN = 4.0
COND_DIM = 32


def mdct_basis(n: int = HOP, keep: int = KEEP) -> torch.Tensor:
    """(keep, 2n) windowed MDCT analysis rows: w[k]·√(2/n)·cos(π/n·(k + ½ + n/2)(j + ½)), sine window."""
    j = torch.arange(2 * n, dtype=torch.float64)
    k = torch.arange(keep, dtype=torch.float64)[:, None]
    win = torch.sin(math.pi * (j + 0.5) / (2 * n))
    return (win * math.sqrt(2 / n) * torch.cos(math.pi / n * (j + 0.5 + n / 2) * (k + 0.5))).float()


def _set_wn(conv, weight: torch.Tensor, bias=None) -> None:
    """Set a weight-normed conv's effective weight (dim-0 rows; all-zero rows get g = 0)."""
    w = weight.to(conv.weight_v.dtype)
    rows = w.reshape(w.shape[0], -1)
    norm = rows.norm(dim=1)
    v = torch.where(norm[:, None] > 0, rows, torch.ones_like(rows)).reshape(w.shape)
    with torch.no_grad():
        conv.weight_v.copy_(v)
        conv.weight_g.copy_(norm.reshape(conv.weight_g.shape))
        if bias is not None:
            conv.bias.copy_(bias)
        elif conv.bias is not None:
            conv.bias.zero_()


def mdct_oobleck():
    from diffusers import AutoencoderOobleck

    vae = AutoencoderOobleck(encoder_hidden_size=2 * KEEP, downsampling_ratios=[HOP], channel_multiples=[1],
                             decoder_channels=KEEP, decoder_input_channels=KEEP, audio_channels=1, sampling_rate=8000)
    with torch.no_grad():
        for name, mod in vae.named_modules():
            if type(mod).__name__ == "Snake1d":
                mod.alpha.fill_(-10.0)
                mod.beta.zero_()
            if type(mod).__name__ == "OobleckResidualUnit":
                for c in (mod.conv1, mod.conv2):
                    _set_wn(c, torch.zeros_like(c.weight_v))
        B = mdct_basis()
        enc, dec = vae.encoder, vae.decoder
        w = torch.zeros_like(enc.conv1.weight_v)  # (32, 1, 7): channel 0 copies the signal
        w[0, 0, 3] = 1
        _set_wn(enc.conv1, w)
        w = torch.zeros_like(enc.block[0].conv1.weight_v)  # (32, 32, 128): MDCT analysis of channel 0
        w[:KEEP, 0, :] = GAIN * B
        _set_wn(enc.block[0].conv1, w)
        w = torch.zeros_like(enc.conv2.weight_v)  # (32, 32, 3): mean = coefficients; scale = −6 (std ≈ 0.0026)
        w[torch.arange(KEEP), torch.arange(KEEP), 1] = 1
        _set_wn(enc.conv2, w, torch.cat([torch.zeros(KEEP), torch.full((KEEP,), -6.0)]))
        w = torch.zeros_like(dec.conv1.weight_v)  # (16, 16, 7) identity
        w[torch.arange(KEEP), torch.arange(KEEP), 3] = 1
        _set_wn(dec.conv1, w)
        ct = dec.block[0].conv_t1  # ConvTranspose1d(16, 16, 128, stride 64): MDCT synthesis onto channel 0
        w = torch.zeros_like(ct.weight_v)
        w[:, 0, :] = B / GAIN
        _set_wn(ct, w)
        w = torch.zeros_like(dec.conv2.weight_v)  # (1, 16, 7): channel 0
        w[0, 0, 3] = 1
        _set_wn(dec.conv2, w)
    return vae.eval()


def mdct_encode(wav: torch.Tensor) -> torch.Tensor:
    """The encoder's mean in plain torch (the same linear map; the Oobleck encoder is slow at full rate)."""
    x = torch.nn.functional.pad(wav, (math.ceil(HOP / 2), math.ceil(HOP / 2)))
    frames = x.unfold(-1, FRAME, HOP)[:, 0]  # (N, T, 128)
    return GAIN * torch.einsum("ntj,kj->nkt", frames, mdct_basis())


def build_tokenizer(out_dir: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    from .data import all_labels

    words = sorted({w for lab in all_labels() for w in lab.caption.replace(",", " ").split()})
    # T5-style pieces: "▁word" for every caption word, and "," (T5TokenizerFast rebuilds a Metaspace Unigram)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (",", -2.0)] + [("\u2581" + w, -1.0) for w in words]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))  # one piece per word (T5TokenizerFast needs a Unigram model)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    t5 = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0,
                         model_max_length=16)
    t5.save_pretrained(out_dir)
    return T5TokenizerFast.from_pretrained(out_dir)


def make_pipeline(tok_dir: str, seed: int = 0, num_layers: int = 3):
    from diffusers import CosineDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioPipeline
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    tok = build_tokenizer(tok_dir)
    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    proj = StableAudioProjectionModel(text_encoder_dim=32, conditioning_dim=COND_DIM, min_value=0, max_value=1)
    dit = StableAudioDiTModel(sample_size=125, in_channels=KEEP, num_layers=num_layers, attention_head_dim=32,
                              num_attention_heads=3, num_key_value_attention_heads=1, out_channels=KEEP,
                              cross_attention_dim=96, time_proj_dim=32, global_states_input_dim=2 * COND_DIM,
                              cross_attention_input_dim=COND_DIM)
    sched = CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500, sigma_data=1.0,
                                              sigma_schedule="exponential", prediction_type="v_prediction",
                                              solver_order=2)
    return StableAudioPipeline(vae=mdct_oobleck(), text_encoder=t5, projection_model=proj, tokenizer=tok,
                               transformer=dit, scheduler=sched)


def conditioning(pipe, captions):
    """Cross-attention tokens cat(text, start, end) and the global token cat(start, end), as the stock __call__."""
    with torch.no_grad():
        ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        hidden = pipe.text_encoder(ids.input_ids, attention_mask=ids.attention_mask)[0]
    text = pipe.projection_model(text_hidden_states=hidden).text_hidden_states * ids.attention_mask[..., None]
    out = pipe.projection_model(start_seconds=torch.zeros(len(captions)), end_seconds=torch.ones(len(captions)))
    s, e = out.seconds_start_hidden_states, out.seconds_end_hidden_states
    return torch.cat([text, s, e], 1), torch.cat([s, e], 2)
