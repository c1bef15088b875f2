"""skip_inert_residual_units: Oobleck residual units whose output branch is all zeros run as the identity, with
bit-identical decodes, an untouched state dict, and no effect on a VAE with trained (non-zero) units."""

from __future__ import annotations

import os

import torch

from genalign.models.speed import skip_inert_residual_units
from genalign.tones.assets import tones_asset


def _tones_vae():
    from diffusers import AutoencoderOobleck

    return AutoencoderOobleck.from_pretrained(os.path.join(str(tones_asset("pipeline")), "vae")).eval()


def test_the_tones_codec_decodes_bit_for_bit_the_same_without_its_inert_units(tmp_path):
    stock, fast = _tones_vae(), _tones_vae()
    assert skip_inert_residual_units(fast) == 12  # 3 per block, 2 blocks, encoder and decoder
    assert skip_inert_residual_units(stock.decoder.block[0].res_unit1) == 1  # only what it is given
    stock = _tones_vae()
    z = 3.0 * torch.randn(3, 48, 32, generator=torch.Generator().manual_seed(0))
    wav = 0.3 * torch.randn(2, 1, 8000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fast.decode(z).sample, stock.decode(z).sample)
        assert torch.equal(fast.encode(wav).latent_dist.mean, stock.encode(wav).latent_dist.mean)
    # the weights are untouched: what is saved is what was loaded
    sd_fast, sd_stock = fast.state_dict(), stock.state_dict()
    assert sd_fast.keys() == sd_stock.keys() and all(torch.equal(sd_fast[k], sd_stock[k]) for k in sd_fast)
    fast.save_pretrained(str(tmp_path / "vae"))
    from diffusers import AutoencoderOobleck

    again = AutoencoderOobleck.from_pretrained(str(tmp_path / "vae")).eval()
    with torch.no_grad():
        assert torch.equal(again.decode(z).sample, stock.decode(z).sample)


def test_units_with_any_non_zero_output_weight_or_bias_are_kept():
    from diffusers import AutoencoderOobleck

    torch.manual_seed(0)
    vae = AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[2, 2], channel_multiples=[1, 2],
                             decoder_channels=8, decoder_input_channels=4, audio_channels=1, sampling_rate=8000)
    assert skip_inert_residual_units(vae) == 0  # randomly initialised: nothing is inert
    units = [m for m in vae.modules() if type(m).__name__ == "OobleckResidualUnit"]
    with torch.no_grad():
        for u in units:
            u.conv2.weight_g.zero_()
            u.conv2.bias.zero_()
        units[0].conv2.bias.fill_(1e-3)  # a bias alone makes the branch non-zero
    assert skip_inert_residual_units(vae) == len(units) - 1
    assert units[0].forward.__name__ == "forward" and units[1].forward.__name__ == "_identity"
    x = torch.randn(2, units[0].conv1.in_channels, 40)
    with torch.no_grad():
        assert torch.equal(units[1](x), x)
        assert not torch.equal(units[0](x), x)


def test_the_stable_audio_family_switches_them_at_load_and_the_switch_turns_it_off(monkeypatch):
    from genalign.config import load_config
    from genalign.registry import MODELS

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "toy", "tones_grpo.yaml"))
    names = lambda g: {m.forward.__name__ for m in g.pipe.vae.modules()  # noqa: E731
                       if type(m).__name__ == "OobleckResidualUnit"}
    assert names(MODELS.get("stable_audio").load(cfg.model)) == {"_identity"}
    monkeypatch.setenv("GENALIGN_SPEED_OFF", "inert_units")
    assert names(MODELS.get("stable_audio").load(cfg.model)) == {"forward"}
