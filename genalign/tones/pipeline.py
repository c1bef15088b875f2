"""The ``tones`` base text-to-audio pipeline's components: a ``StableAudioPipeline`` of the real diffusers classes
(built here, pretrained by ``scripts/build_tones_pipeline.py``, shipped in assets/tones/pipeline/).

* ``AutoencoderOobleck`` set **analytically**, not trained: training an Oobleck VAE to pitch-accurate
  reconstructions takes hours on a CPU (measured: 3.5 s per batch-16 step at hop 64 on this machine). Its Snake
  activations are made the identity (α = e^-10: x + sin²(αx) ≈ x + 2e-9·x²) and its residual units zero, which
  leaves a linear multirate filter bank in two strided stages (``STRIDES`` 16 × 16, :func:`mdct_oobleck`): the
  encoder computes the MDCT coefficients k = 16..63 (sine window, frame 512, hop 256: 15.6 Hz bins, 250–1000 Hz,
  every fundamental of the tones) of each frame, the decoder the matching MDCT synthesis (TDAC overlap-add).
  Latent: 48 channels × 32 frames (31.25 per second) of 8 kHz mono; decode = the clip band-passed to 250–1000 Hz
  (+ the truncation's small time-domain aliasing). Scaled by ``GAIN`` so latents have roughly unit scale (σ_data 1).
  Why hop 256 and not the first build's hop 64 (16 coefficients × 125 frames): with 62.5 Hz bins a pitch lives in
  the frame-to-frame rotation of a few coefficients (random phases: zero mean, only second-order structure), which
  the small DiT learned slowly (held-out tone_correctness 0.13 after 800 steps, 0.18 after 300 more at a better
  timestep range); with 15.6 Hz bins (a semitone at C4) the pitch is *which channels carry energy*, a per-token
  gain the DiT learns fast (0.32 after 750 steps), and 4× fewer tokens make each step ~4× cheaper.
* ``T5EncoderModel`` (1 layer, d 32, frozen random, as SAO's T5 is frozen) + a word-level ``T5TokenizerFast``
  over the tones vocabulary; ``StableAudioProjectionModel`` (trained); ``StableAudioDiTModel`` (trained);
  ``CosineDPMSolverMultistepScheduler`` of the released checkpoint (σ 0.3..500, v-prediction, σ_data 1).
"""

from __future__ import annotations

import math

import torch

STRIDES = (16, 16)  # the Oobleck's two downsampling stages: hop N = 256 samples (32 ms at 8 kHz)
HOP = STRIDES[0] * STRIDES[1]
FRAME = 2 * HOP  # MDCT frame 2N = 512 samples (64 ms): bins of 8000/(2N) = 15.6 Hz, a semitone at C4
K_LO, K_HI = 16, 64  # MDCT coefficients kept: 250..1000 Hz (every fundamental, C4 262 Hz .. F#5 740 Hz)
KEEP = K_HI - K_LO  # latent channels
FRAMES = 32  # latent frames of a 1 s clip (mdct_encode pads the tail so that every sample lies in two frames)
GAIN = 3.0  # latents of roughly unit scale (σ_data = 1)
COND_DIM = 32


def mdct_basis(n: int = HOP, lo: int = K_LO, hi: int = K_HI) -> torch.Tensor:
    """(hi-lo, 2n) windowed MDCT analysis rows k = lo..hi-1: w[j]·√(2/n)·cos(π/n·(j + ½ + n/2)(k + ½)), sine window
    (orthonormal TDAC: synthesis uses the same rows)."""
    j = torch.arange(2 * n, dtype=torch.float64)
    k = torch.arange(lo, hi, dtype=torch.float64)[:, None]
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
    """The analytic two-stage MDCT ``AutoencoderOobleck`` (module doc). Encoder: conv1 copies the signal to channel 0;
    stage A (stride S_a) splits it into S_a polyphase channels h[c, q] = x[q·S_a + c + δ]; stage B (stride S_b,
    kernel 2S_b) applies the MDCT rows to 2S_b·S_a = 2N samples, W[k, c, u] = GAIN·B[k, u·S_a + c]. Decoder: stage 1
    (stride S_b) synthesises S_a polyphase channels, W1[k, r, p] = B[k, p·S_a + r]/GAIN; stage 2 (stride S_a)
    interleaves them. δ and the decoder's shift σ absorb the convolutions' paddings (ceil(stride/2) per stage) so
    that the frames sit where :func:`mdct_encode` puts them (frame n starts at sample n·N − N/2)."""
    from diffusers import AutoencoderOobleck

    sa, sb = STRIDES
    H = 2 * KEEP  # encoder width: mean and scale channels
    D = max(KEEP, sa)  # decoder width
    vae = AutoencoderOobleck(encoder_hidden_size=H, downsampling_ratios=list(STRIDES), channel_multiples=[1, 1],
                             decoder_channels=D, decoder_input_channels=KEEP, audio_channels=1, sampling_rate=8000)
    pa, pb = math.ceil(sa / 2), math.ceil(sb / 2)
    delta = pa + pb * sa - HOP // 2  # encoder polyphase shift
    sigma = pa + pb * sa - HOP // 2  # decoder interleave shift (stage 1 has stride sb, stage 2 stride sa)
    assert 0 <= delta <= sa and 0 <= sigma <= sa
    with torch.no_grad():
        for name, mod in vae.named_modules():
            if type(mod).__name__ == "Snake1d":
                mod.alpha.fill_(-10.0)
                mod.beta.zero_()
            if type(mod).__name__ == "OobleckResidualUnit":
                for c in (mod.conv1, mod.conv2):
                    _set_wn(c, torch.zeros_like(c.weight_v))
        B = mdct_basis()  # (KEEP, 2N)
        enc, dec = vae.encoder, vae.decoder
        w = torch.zeros_like(enc.conv1.weight_v)  # (H, 1, 7): channel 0 copies the signal
        w[0, 0, 3] = 1
        _set_wn(enc.conv1, w)
        w = torch.zeros_like(enc.block[0].conv1.weight_v)  # (H, H, 2sa): polyphase split of channel 0
        w[torch.arange(sa), 0, torch.arange(sa) + delta] = 1
        _set_wn(enc.block[0].conv1, w)
        w = torch.zeros_like(enc.block[1].conv1.weight_v)  # (H, H, 2sb): MDCT analysis of the polyphase channels
        w[:KEEP, :sa, :] = GAIN * B.reshape(KEEP, 2 * sb, sa).permute(0, 2, 1)
        _set_wn(enc.block[1].conv1, w)
        w = torch.zeros_like(enc.conv2.weight_v)  # (H, H, 3): mean = coefficients; scale = −6 (std ≈ 0.0026)
        w[torch.arange(KEEP), torch.arange(KEEP), 1] = 1
        _set_wn(enc.conv2, w, torch.cat([torch.zeros(KEEP), torch.full((KEEP,), -6.0)]))
        w = torch.zeros_like(dec.conv1.weight_v)  # (D, KEEP, 7) identity
        w[torch.arange(KEEP), torch.arange(KEEP), 3] = 1
        _set_wn(dec.conv1, w)
        ct = dec.block[0].conv_t1  # ConvTranspose1d(D, D, 2sb, stride sb): MDCT synthesis onto sa polyphase channels
        w = torch.zeros_like(ct.weight_v)
        w[:KEEP, :sa, :] = B.reshape(KEEP, 2 * sb, sa).permute(0, 2, 1) / GAIN
        _set_wn(ct, w)
        ct = dec.block[1].conv_t1  # ConvTranspose1d(D, D, 2sa, stride sa): interleave onto channel 0
        w = torch.zeros_like(ct.weight_v)
        w[torch.arange(sa), 0, torch.arange(sa) + sigma] = 1
        _set_wn(ct, w)
        w = torch.zeros_like(dec.conv2.weight_v)  # (1, D, 7): channel 0
        w[0, 0, 3] = 1
        _set_wn(dec.conv2, w)
    return vae.eval()


def mdct_encode(wav: torch.Tensor, frames: int = FRAMES) -> torch.Tensor:
    """The encoder's mean in plain torch (the same linear map): ``frames`` MDCT frames, frame n on samples
    n·N − N/2 .. n·N + 3N/2 (zero outside the clip). The Oobleck encoder's output is the first frames of these
    (its convolution arithmetic stops one frame short of a 1 s clip's last, half-covered frame)."""
    need = (frames + 1) * HOP
    x = torch.nn.functional.pad(wav, (HOP // 2, max(0, need - HOP // 2 - wav.shape[-1])))[..., :need]
    return GAIN * torch.einsum("ntj,kj->nkt", x.unfold(-1, FRAME, HOP)[:, 0], mdct_basis())


def mdct_decode(lat: torch.Tensor, length: int) -> torch.Tensor:
    """Plain-torch MDCT synthesis (TDAC overlap-add) of latents (N, KEEP, T) -> (N, 1, length)."""
    y = torch.nn.functional.conv_transpose1d(lat / GAIN, mdct_basis()[:, None, :], stride=HOP)
    return y[:, :, HOP // 2:HOP // 2 + length]


def codec_round_trip(vae, wav: torch.Tensor) -> torch.Tensor:
    """Clips (N, 1, L) as the pipeline can produce them: encoded (the encoder's mean) and decoded by ``vae``,
    cropped to L and clamped to [-1, 1]."""
    with torch.no_grad():
        return vae.decode(mdct_encode(wav)).sample[..., :wav.shape[-1]].clamp(-1, 1)


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
    dit = StableAudioDiTModel(sample_size=FRAMES, in_channels=KEEP, num_layers=num_layers, attention_head_dim=32,
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
