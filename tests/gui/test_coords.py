"""smart_resize (METHODS.md §12), frame maps and their round trips, output parsing."""

import random

import pytest

from genalign.errors import GenalignError
from genalign.gui import coords as C


@pytest.mark.parametrize("w,h,max_pixels,expected", [
    (1920, 1080, 12_845_056, (1932, 1092)),
    (3840, 2160, 12_845_056, (3836, 2156)),
    (1920, 1080, 1_003_520, (1316, 728)),
    (3840, 2160, 1_003_520, (1316, 728)),
])
def test_worked_examples(w, h, max_pixels, expected):
    rw, rh = C.resized_size(w, h, min_pixels=3136, max_pixels=max_pixels)
    assert (rw, rh) == expected
    assert C.smart_resize(h, w, min_pixels=3136, max_pixels=max_pixels) == (rh, rw)


def test_visual_tokens():
    rw, rh = C.resized_size(1920, 1080, 3136, 12_845_056)
    assert (rw // 28) * (rh // 28) == 2691
    rw, rh = C.resized_size(3840, 2160, 3136, 12_845_056)
    assert (rw // 28) * (rh // 28) == 10549


def test_round_half_to_even():
    # 42/28 = 1.5 -> 2 (even); 70/28 = 2.5 -> 2 (even): Python round, as the reference
    assert C.smart_resize(42, 280, min_pixels=1, max_pixels=10**9) == (56, 280)
    assert C.smart_resize(70, 280, min_pixels=1, max_pixels=10**9) == (56, 280)
    assert C.smart_resize(98, 280, min_pixels=1, max_pixels=10**9) == (112, 280)  # 3.5 -> 4


def test_min_pixels_branch():
    # 30x30 -> rounded 28x28 = 784 < 3136 -> scale up: ceil(30*sqrt(3136/900)/28)*28 = 56
    assert C.smart_resize(30, 30, min_pixels=3136, max_pixels=10**7) == (56, 56)


def test_aspect_ratio_error():
    with pytest.raises(GenalignError, match="aspect ratio"):
        C.smart_resize(10, 2100)
    with pytest.raises(GenalignError, match="positive"):
        C.smart_resize(0, 20)


def test_matches_transformers_smart_resize():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    rng = random.Random(0)
    cases = [(1080, 1920), (2160, 3840), (42, 280), (70, 280), (360, 200), (230, 360), (240, 320)]
    cases += [(rng.randint(40, 4000), rng.randint(40, 4000)) for _ in range(300)]
    for h, w in cases:
        for mn, mx in [(3136, 12_845_056), (3136, 1_003_520), (56 * 56, 28 * 28 * 160), (200_000, 400_000)]:
            assert C.smart_resize(h, w, 28, mn, mx) == hf_smart_resize(h, w, 28, mn, mx), (h, w, mn, mx)


def test_processor_pixels_are_the_processors():
    from transformers import Qwen2VLImageProcessor

    ip = Qwen2VLImageProcessor()
    assert C.processor_pixels(ip) == (3136, 1_003_520, 28)
    ip = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12_845_056)
    assert C.processor_pixels(ip) == (3136, 12_845_056, 28)
    C.set_processor_pixels(ip, 1000, 50_000)
    assert C.processor_pixels(ip) == (1000, 50_000, 28)
    # and the processor really resizes to our frame
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.zeros((230, 360, 3), dtype=np.uint8))
    out = ip(images=[img], return_tensors="pt")
    t, gh, gw = out["image_grid_thw"][0].tolist()
    assert (gw * 14, gh * 14) == C.resized_size(360, 230, 1000, 50_000)


def test_frames_round_trip():
    rng = random.Random(1)
    for _ in range(200):
        w, h = rng.randint(50, 4000), rng.randint(50, 4000)
        if max(w, h) / min(w, h) > 200:
            continue
        rsz = C.resized_size(w, h, 3136, 1_003_520)
        box = [rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)]
        for f in C.FRAMES:
            there = C.convert_coords(box, "pixel", f, (w, h), rsz)
            back = C.convert_coords(there, f, "pixel", (w, h), rsz)
            assert back == pytest.approx(box, rel=1e-9, abs=1e-9)
        pt = box[:2]
        assert C.convert_coords(C.convert_coords(pt, "norm1000", "resized", (w, h), rsz), "resized", "norm1000",
                                (w, h), rsz) == pytest.approx(pt)


def test_frame_values_hand_computed():
    # 1920x1080 -> 1316x728 (default processor): GT box mapped with (w'/w, h'/h)
    size, rsz = (1920, 1080), (1316, 728)
    box = [960, 540, 1920, 1080]
    assert C.convert_coords(box, "pixel", "resized", size, rsz) == pytest.approx([658, 364, 1316, 728])
    assert C.convert_coords(box, "pixel", "norm", size, rsz) == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert C.convert_coords(box, "pixel", "norm1000", size, rsz) == pytest.approx([500, 500, 1000, 1000])
    assert C.convert_coords([658, 364], "resized", "pixel", size, rsz) == pytest.approx([960, 540])
    with pytest.raises(GenalignError, match="valid choices"):
        C.convert_coords(box, "pixel", "pixels", size, rsz)
    with pytest.raises(GenalignError, match="resized"):
        C.convert_coords(box, "pixel", "resized", size, None)


def test_parse_box_and_click():
    assert C.parse_box("[1, 2, 3, 4]") == (1.0, 2.0, 3.0, 4.0)
    assert C.parse_box("x [-1.5,2,3.25,4] y [9,9,9,9]") == (-1.5, 2.0, 3.25, 4.0)
    assert C.parse_box("<|box_start|>(100,200),(300,400)<|box_end|>") == (100.0, 200.0, 300.0, 400.0)
    assert C.parse_box("[1,2]") is None and C.parse_box("") is None
    assert C.parse_box("user [1,2,3,4]\nassistant\n[5,6,7,8]") == (5.0, 6.0, 7.0, 8.0)
    assert C.parse_click("[10,20,30,40]") == (20.0, 30.0)
    assert C.parse_click("click (12, 34)") == (12.0, 34.0)
    assert C.parse_click("[0.5,0.25]") == (0.5, 0.25)
    assert C.parse_click("nothing") is None
    assert C.parse_click([{"role": "assistant", "content": "[2,2,4,4]"}]) == (3.0, 3.0)
    assert C.format_box([1.4, 2.6, 3.5, 4.5]) == "[1,3,4,4]"
    assert C.is_strict_box("[1,2,3,4]") and not C.is_strict_box("[1,2,3,4].")
