"""The tones pipeline's analytic MDCT codec (genalign/tones/pipeline.py): the real AutoencoderOobleck class computes
exactly the plain-torch MDCT, reconstructs the 250-1000 Hz band, and puts a pitch in its own channel."""

import math

import torch

from genalign.tones.data import CLIP_LEN, SAMPLE_RATE, ToneLabel, make_clips, prompt_notes
from genalign.tones.pipeline import FRAMES, HOP, K_LO, KEEP, mdct_decode, mdct_encode, mdct_oobleck
from genalign.tones.rewards import tone_correctness_score


def _sine(freq, n=1):
    t = torch.arange(CLIP_LEN, dtype=torch.float32) / SAMPLE_RATE
    return (0.5 * torch.sin(2 * math.pi * freq * t)).expand(n, 1, CLIP_LEN).contiguous()


def test_oobleck_encoder_and_decoder_are_the_mdct():
    vae = mdct_oobleck()
    labels = [ToneLabel(0, "major chord", "bright", "staccato"), ToneLabel(7, "note", "hollow", "legato")]
    wav = make_clips(labels, 3)
    lat = mdct_encode(wav)
    assert lat.shape == (2, KEEP, FRAMES)
    with torch.no_grad():
        enc = vae.encode(wav).latent_dist.mean
        dec = vae.decode(lat).sample
    assert enc.shape[-1] == FRAMES - 1  # the conv arithmetic stops one (half-covered) frame short
    torch.testing.assert_close(enc, lat[..., :FRAMES - 1], atol=1e-4, rtol=0)
    assert dec.shape[-1] == FRAMES * HOP >= CLIP_LEN
    torch.testing.assert_close(dec[..., :CLIP_LEN], mdct_decode(lat, CLIP_LEN), atol=1e-5, rtol=0)
    # the decoded clips keep their notes (the band holds every fundamental)
    score = tone_correctness_score(dec[..., :CLIP_LEN], prompt_notes([lab.caption for lab in labels]))
    assert float(score.min()) > 0.95


def test_a_pitch_is_a_channel_and_the_band_reconstructs():
    for freq in (300.0, 523.25, 740.0):
        lat = mdct_encode(_sine(freq))
        energy = lat[0, :, 2:-2].pow(2).sum(-1)
        k = int(energy.argmax()) + K_LO
        assert abs((k + 0.5) * SAMPLE_RATE / (2 * HOP) - freq) <= SAMPLE_RATE / (2 * HOP)  # within one 15.6 Hz bin
        assert float(energy.topk(3).values.sum() / energy.sum()) > 0.9
        rec = mdct_decode(lat, CLIP_LEN)[0, 0, HOP:-HOP]  # away from the edge frames
        ref = _sine(freq)[0, 0, HOP:-HOP]
        assert float((rec - ref).pow(2).mean() / ref.pow(2).mean()) < 1e-3
    # out of band (100 Hz, 2 kHz): almost nothing survives
    for freq in (100.0, 2000.0):
        assert float(mdct_decode(mdct_encode(_sine(freq)), CLIP_LEN).pow(2).mean()) < 1e-3 * 0.125
