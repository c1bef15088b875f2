import pytest
import torch

from genalign.errors import GenalignError
from genalign.toy import data as D


@pytest.mark.parametrize("prompt,digit", [
    ("a handwritten digit seven", 7),
    ("a handwritten digit zero, thick strokes", 0),
    ("A Handwritten Digit NINE", 9),
    ("the number 3", 3),
    ("seven seven", 7),
    ("a handwritten digit", None),
    ("one or two", None),           # two different digits: ambiguous
    ("someone sevenish 42", None),  # no whole-word digit
    ("", None),
])
def test_parse_digit(prompt, digit):
    assert D.parse_digit(prompt) == digit


def test_prompt_digits_metadata_wins():
    assert D.prompt_digits(["a digit seven", "a cat", "a cat"], [{"digit": 2}, {}, {"digit": 0}]) == [2, None, 0]


def test_splits_are_fixed_disjoint_and_complete():
    tr, ho = D.split_indices("train"), D.split_indices("heldout")
    assert len(tr) == 1437 and len(ho) == 360
    assert len(set(tr.tolist()) | set(ho.tolist())) == 1797
    assert torch.equal(D.split_indices("train"), tr)
    with pytest.raises(GenalignError, match="valid choices"):
        D.split_indices("test")


def test_images_are_white_on_black_rgb_16():
    x, y = D.load_split("heldout")
    assert x.shape == (360, 3, 16, 16) and y.shape == (360,)
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    # background (the left/right borders: sklearn digits fill the height) is dark, ink is bright
    assert x[..., 0].mean() < 0.05 and x[..., -1].mean() < 0.05 and x.amax(dim=(1, 2, 3)).min() > 0.5


def test_upsample_is_bilinear():
    img = torch.zeros(1, 8, 8)
    img[0, 0, 0] = 1.0
    up = D.upsample(img)
    # align_corners=False bilinear: output pixel (0,0) maps to source (-0.25,-0.25) -> clamped to (0,0): 1.0;
    # output (1,1) maps to (0.25,0.25): weight (0.75)^2 on source (0,0)
    assert up[0, 0, 0, 0].item() == pytest.approx(1.0)
    assert up[0, 0, 1, 1].item() == pytest.approx(0.5625)


def test_ink_thresholds_are_train_tertiles():
    x, _ = D.load_split("train")
    q = D.ink(x).quantile(torch.tensor([1 / 3, 2 / 3]))
    assert abs(q[0].item() - D.THIN_INK) < 0.005 and abs(q[1].item() - D.THICK_INK) < 0.005
    assert D.stroke_attribute(0.2) == "thin strokes" and D.stroke_attribute(0.4) == "thick strokes"
    assert D.stroke_attribute(0.3) is None


def test_prompt_lists(tmp_path):
    train, ev = D.digit_prompts("train"), D.digit_prompts("eval")
    assert len(train) == 30 and len(set(train)) == 30 and len(ev) == 10
    assert ev[7] == "a handwritten digit seven" and "a handwritten digit seven, thin strokes" in train
    assert [D.parse_digit(p) for p in ev] == list(range(10))
    paths = D.write_prompt_files(str(tmp_path))
    from genalign.io import read_prompts

    assert read_prompts(paths["train"]) == train and read_prompts(paths["eval"]) == ev
    g = torch.Generator().manual_seed(0)
    ps = D.training_prompts(torch.tensor([7, 1]), torch.tensor([0.5, 0.3]), g, p_attribute=1.0)
    assert ps == ["a handwritten digit seven, thick strokes", "a handwritten digit one"]
