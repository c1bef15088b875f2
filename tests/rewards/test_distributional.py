"""DRAGON distributional rewards with hand-checkable encoders, exemplar folders and caching."""

import os

import pytest
import torch

from genalign.errors import ConfigError, GenalignError
from genalign.rewards import stats
from genalign.rewards.base import build_reward
from genalign.rewards.distributional import ExemplarSet
from genalign.rewards.encoders import encode_png, encode_wav
from reward_fixtures import COLORS, caption, color_images, mean_rgb


class CountingEncoder:
    id = "counting-mean-rgb"

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return mean_rgb(x)


def solid(rgbs, size=8):
    return torch.stack([torch.tensor(c, dtype=torch.float32).view(3, 1, 1).expand(3, size, size) for c in rgbs])


def test_centroid_similarity_hand_values():
    ref = solid([(1, 0, 0), (0, 1, 0)])  # centroid of mean colours (0.5, 0.5, 0)
    r = build_reward("centroid_similarity", {"encoder": mean_rgb, "reference": ref})
    x = solid([(1, 1, 0), (1, 0, 0), (0, 0, 1)])
    s = r(x, ["", "", ""])
    assert s.tolist() == pytest.approx([1.0, 2 ** -0.5, 0.0], abs=1e-6)
    assert r.scope == "sample"


def test_exemplar_folder_cache(tmp_path):
    folder = tmp_path / "ref"
    folder.mkdir()
    for i, c in enumerate([(1, 0, 0), (0, 1, 0), (0, 0, 1)]):
        (folder / f"{i}.png").write_bytes(encode_png(solid([c])[0]))
    (folder / "notes.txt").write_text("ignored")
    enc = CountingEncoder()
    ex = ExemplarSet(enc, str(folder), cache_dir=str(tmp_path / "cache"))
    e = ex.embeddings
    assert e.shape == (3, 3) and torch.allclose(e, torch.eye(3), atol=1e-6)
    assert enc.calls == 1 and os.path.exists(ex.cache_path)
    ex2 = ExemplarSet(enc, str(folder), cache_dir=str(tmp_path / "cache"))
    assert torch.equal(ex2.embeddings, e) and enc.calls == 1  # read from the cache
    (folder / "3.png").write_bytes(encode_png(solid([(1, 1, 1)])[0]))
    ex3 = ExemplarSet(enc, str(folder), cache_dir=str(tmp_path / "cache"))
    assert ex3.embeddings.shape == (4, 3) and enc.calls == 2 and ex3.cache_path != ex.cache_path
    with open(ex3.cache_path, "wb") as f:  # a corrupt cache entry is recomputed
        f.write(b"garbage")
    assert ExemplarSet(enc, str(folder), cache_dir=str(tmp_path / "cache")).embeddings.shape == (4, 3)
    assert enc.calls == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GenalignError, match="no image"):
        ExemplarSet(enc, str(empty), cache_dir=str(tmp_path / "cache")).embeddings
    (empty / "x.png").write_bytes(b"not a png")
    with pytest.raises(GenalignError, match="not a readable image"):
        ExemplarSet(enc, str(empty), cache_dir=str(tmp_path / "cache")).embeddings


def test_audio_folder_exemplars(tmp_path):
    folder = tmp_path / "wavs"
    folder.mkdir()
    t = torch.arange(800) / 8000.0
    for i, amp in enumerate([0.1, 0.5]):
        (folder / f"{i}.wav").write_bytes(encode_wav((amp * torch.sin(2 * torch.pi * 440 * t))[None], 8000))

    def rms_peak(w):
        return torch.stack([w.pow(2).mean(dim=(1, 2)).sqrt(), w.abs().amax(dim=(1, 2))], dim=1)

    ex = ExemplarSet(rms_peak, str(folder), cache_dir=str(tmp_path / "c"), sample_rate=8000)
    e = ex.embeddings
    assert e.shape == (2, 2)
    assert e[:, 0].tolist() == pytest.approx([0.1 / 2 ** 0.5, 0.5 / 2 ** 0.5], rel=2e-3)
    with pytest.raises(GenalignError, match="sample rate"):
        ExemplarSet(rms_peak, str(folder), cache_dir=str(tmp_path / "c2"), sample_rate=16000).embeddings


def test_text_exemplars_with_cross_modal_clip(tiny_clip_dir, tmp_path):
    prompts = tmp_path / "ref.txt"
    prompts.write_text(caption("red") + "\n")
    r = build_reward("centroid_similarity", {"encoder": "clip", "encoder_args": {"model": tiny_clip_dir},
                                             "reference": str(prompts), "cache_dir": str(tmp_path / "c")})
    s = r(color_images(list(COLORS), seed=5), ["", "", ""])
    assert s[0] == s.max()  # the red image is closest to the red caption
    with pytest.raises(GenalignError, match="not cross-modal"):
        build_reward("centroid_similarity", {"encoder": mean_rgb, "reference": str(prompts)})(torch.rand(1, 3, 4, 4), [""])


@pytest.mark.parametrize("name", ["fd", "fd_contribution", "mmd"])
def test_set_rewards_value_and_contributions(name):
    g = torch.Generator().manual_seed(0)
    ref = (torch.full((40, 3, 4, 4), 0.5) + 0.1 * torch.randn(40, 3, 4, 4, generator=g)).clamp(0, 1)
    gen = (torch.full((8, 3, 4, 4), 0.8) + 0.1 * torch.randn(8, 3, 4, 4, generator=g)).clamp(0, 1)
    gen[3] = ref[0]  # the one sample drawn from the reference distribution
    r = build_reward(name, {"encoder": mean_rgb, "reference": ref})
    assert r.scope == "set"
    value = r.set_value(gen)
    e_gen, e_ref = mean_rgb(gen).double(), mean_rgb(ref).double()
    stat = stats.frechet_distance(e_gen, e_ref) if name != "mmd" else stats.mmd2_unbiased(e_gen, e_ref)
    assert value.item() == pytest.approx(-stat.item(), rel=1e-6)
    s = r(gen, [""] * 8)
    assert s.shape == (8,) and torch.isfinite(s).all()
    # per-sample score = R(batch) - R(batch without i), checked directly for one sample
    drop = torch.cat([gen[:2], gen[3:]])
    assert s[2].item() == pytest.approx((value - r.set_value(drop)).item(), rel=1e-4, abs=1e-9)
    assert s.argmax().item() == 3  # the reference-like sample helps the shifted set most
    with pytest.raises(GenalignError, match="at least 3 samples"):
        r(gen[:2], ["", ""])


def test_vendi_reward_ranks_duplicates_low():
    x = solid([(1, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)])
    r = build_reward("vendi", {"encoder": mean_rgb})
    # K/n eigenvalues 1/2, 1/4, 1/4, 0 -> exp(-(1/2 ln 1/2 + 2 * 1/4 ln 1/4)) = 2^1.5
    assert r.set_value(x).item() == pytest.approx(2 ** 1.5, rel=1e-9)
    s = r(x, [""] * 4)
    assert s[0] == pytest.approx(s[1].item()) and s[0] < s[2] and s[2] == pytest.approx(s[3].item())


def test_exemplar_loglik_hand_values_and_ranking():
    # exemplars' mean colours: (1,0,0), (0,1,0), (1,1,0), (0,0,0) -> μ = (.5,.5,0), Σ = diag(1/3, 1/3, 0),
    # tr Σ / 3 = 2/9; shrinkage 0.5 -> Σ_λ = diag(4/9, 4/9, 1/9)
    ref = solid([(1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 0)])
    r = build_reward("exemplar_loglik", {"encoder": mean_rgb, "reference": ref, "shrinkage": 0.5})
    assert r.scope == "sample"
    x = solid([(0.5, 0.5, 0), (0.5, 0.5, 1), (1, 1, 0)])
    var = torch.tensor([4 / 9, 4 / 9, 1 / 9], dtype=torch.float64)
    d = mean_rgb(x).double() - torch.tensor([0.5, 0.5, 0], dtype=torch.float64)
    want = -0.5 * ((d ** 2 / var).sum(1) + var.log().sum() + 3 * torch.log(torch.tensor(2 * torch.pi))) / 3
    s = r(x, [""] * 3)
    assert s.shape == (3,) and torch.allclose(s.double(), want, atol=1e-5)
    # blue is off the exemplars' plane (a direction they never vary along): far less likely than a corner
    # exemplar, which is itself less likely than the centre
    assert s[0] > s[2] > s[1]
    with pytest.raises(GenalignError, match="shrinkage > 0"):
        build_reward("exemplar_loglik", {"encoder": mean_rgb, "reference": ref, "shrinkage": 0})(x, [""] * 3)
    with pytest.raises(GenalignError, match="at least 2"):
        build_reward("exemplar_loglik", {"encoder": mean_rgb, "reference": ref[:1]})(x, [""] * 3)
    with pytest.raises(ConfigError, match="shrinkage must be >= 0"):
        build_reward("exemplar_loglik", {"encoder": mean_rgb, "reference": ref, "shrinkage": -1})


def test_vendi_per_prompt_hand_values():
    # prompt a: two identical reds (Vendi 1, removing one leaves 1 -> change 0);
    # prompt b: red and green (Vendi 2, removing one leaves 1 -> change 1); prompt c: one sample -> 0.
    # R is the mean over the 3 prompts, so each score R(batch) - R(batch - i) is its group's change / 3
    x = solid([(1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)])
    prompts = ["a", "a", "b", "b", "c"]
    r = build_reward("vendi", {"encoder": mean_rgb, "per_prompt": True})
    assert r.set_value(x, prompts).item() == pytest.approx((1 + 2 + 1) / 3)
    s = r(x, prompts)
    assert s.tolist() == pytest.approx([0.0, 0.0, 1 / 3, 1 / 3, 0.0], abs=1e-7)
    keep = [0, 1, 3, 4]  # drop sample 2: prompt b is left with one sample
    assert s[2].item() == pytest.approx((r.set_value(x, prompts) - r.set_value(x[keep], [prompts[i] for i in keep])).item())
    # the whole-batch form sees the three colours across prompts instead
    assert build_reward("vendi", {"encoder": mean_rgb}).set_value(x).item() > 2.0
    with pytest.raises(GenalignError, match="group_size >= 2"):
        r(x[:3], ["a", "b", "c"])
    with pytest.raises(GenalignError, match="one prompt per sample"):
        r.set_value(x, None)


def test_encoder_by_dotted_path_and_config_errors():
    r = build_reward("centroid_similarity", {"encoder": "reward_fixtures:mean_rgb", "reference": solid([(1, 0, 0)])})
    assert r(solid([(1, 0, 0)]), [""]).item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="needs reference"):
        build_reward("fd", {"encoder": mean_rgb})
    with pytest.raises(ConfigError, match="valid keys"):
        build_reward("fd", {"encoder": mean_rgb, "reference": solid([(1, 0, 0)]), "bogus": 1})
    with pytest.raises(ConfigError, match="unknown reference kind"):
        build_reward("fd", {"encoder": mean_rgb, "reference": solid([(1, 0, 0)]), "reference_kind": "video"})
    with pytest.raises(GenalignError, match="not found or of unknown type"):
        build_reward("fd", {"encoder": mean_rgb, "reference": "/no/such/thing"}).set_value(solid([(1, 0, 0)] * 3))


def test_shipped_real_model_dragon_recipes_build_their_rewards(tiny_clip_dir, tiny_dinov2, tmp_path, monkeypatch):
    """configs/sd35/dragon_*.yaml: the rewards build from the recipe's own arguments, with the tiny encoders of the
    same classes standing in for the hub weights (the code path a hub id takes)."""
    from genalign.config import load_config
    from genalign.io import read_prompts

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.chdir(repo)
    x = color_images(list(COLORS), size=32)
    # cross-modal: CLIP text exemplars from the shipped sentences file
    spec = load_config("configs/sd35/dragon_clip_text.yaml").rewards[0]
    args = {**spec.args, "encoder_args": {"model": tiny_clip_dir}, "cache_dir": str(tmp_path / "cache")}
    r = build_reward(spec.name, args)
    assert r.exemplars.embeddings.shape[0] == len(read_prompts(spec.args["reference"])) == 12
    s = r(x, ["a cat"] * 3)
    assert s.shape == (3,) and ((s >= -1) & (s <= 1)).all()
    # DINOv2 FD against an exemplar image folder: the recipe's default folder is the user's to fill -> a clear error
    spec = load_config("configs/sd35/dragon_dinov2_fd.yaml").rewards[0]
    args = {**spec.args, "encoder_args": {"model": tiny_dinov2}, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(GenalignError, match="data/exemplars"):
        build_reward(spec.name, args).set_value(x)
    folder = tmp_path / "exemplars"
    folder.mkdir()
    for i, img in enumerate(color_images(list(COLORS) * 2, size=32, seed=1)):
        (folder / f"{i}.png").write_bytes(encode_png(img))
    r = build_reward(spec.name, {**args, "reference": str(folder)})
    assert r.exemplars.embeddings.shape == (2 * len(COLORS), 32)
    assert torch.isfinite(r.set_value(x)) and r(x, [""] * 3).shape == (3,)


def test_embed_exemplars_cli_writes_a_reference_file(tiny_clip_dir, tmp_path, capsys):
    """`genalign embed-exemplars` embeds once; the file scores exactly like the source it came from."""
    from safetensors import safe_open

    from genalign.cli import main

    prompts = tmp_path / "style.txt"
    prompts.write_text("# exemplars\na photo of a red square\na photo of a blue square\n")
    out = tmp_path / "style.safetensors"
    assert main(["embed-exemplars", "--encoder", "clip", "--arg", f"model={tiny_clip_dir}", "--reference",
                 str(prompts), "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("embeddings").shape[0] == 2 and f.metadata()["kind"] == "text"
    x = color_images(list(COLORS), size=32)
    by_text = build_reward("centroid_similarity", {"encoder": "clip", "encoder_args": {"model": tiny_clip_dir},
                                                   "reference": str(prompts), "cache_dir": str(tmp_path / "c")})
    by_file = build_reward("centroid_similarity", {"encoder": "clip", "encoder_args": {"model": tiny_clip_dir},
                                                   "reference": str(out)})
    assert torch.allclose(by_text(x, [""] * 3), by_file(x, [""] * 3), atol=1e-6)
    assert main(["embed-exemplars", "--encoder", "clip", "--reference", str(prompts), "--out",
                 str(tmp_path / "x.pt")]) == 2
    assert main(["embed-exemplars", "--encoder", "clip", "--arg", f"model={tiny_clip_dir}", "--reference",
                 str(tmp_path / "missing"), "--out", str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "must end in .safetensors" in err[-2] and "not found" in err[-1]
    assert not (tmp_path / "y.safetensors").exists()
