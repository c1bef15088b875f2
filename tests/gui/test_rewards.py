"""GUI-G² rewards: METHODS.md §12 reference table, closed form, degenerate inputs, trl signature."""

import math

import pytest

from genalign.errors import ConfigError
from genalign.gui import rewards as R

GT = [100, 100, 200, 140]  # sigma_g = (50, 20)

# prediction, R_point, R_cov (METHODS.md §12 reference values, 3 decimals)
TABLE = [
    ("[100,100,200,140]", 1.000, 1.000),
    ("[150,100,250,140]", 0.607, 0.882),
    ("[100,100,300,180]", 0.368, 0.724),
    ("[125,110,175,130]", 1.000, 0.800),
    ("[137.5,115,162.5,125]", 1.000, 0.471),
    ("[1000,1000,1100,1040]", 0.000, 0.000),
]


@pytest.mark.parametrize("pred,rp,rc", TABLE)
def test_reference_table(pred, rp, rc):
    assert R.gaussian_point_reward(None, [pred], bbox=[GT]) == [rp]
    assert R.gaussian_coverage_reward(None, [pred], bbox=[GT]) == [rc]
    assert R.gaussian_reward(None, [pred], bbox=[GT]) == [pytest.approx(rp + rc)]


def test_hand_computed_shift():
    # shifted by w/2 in x: point exp(-1/2); coverage D_B = 1/8 * 50^2/50^2 -> exp(-1/8)
    p = R.gaussian_point_reward(None, ["[150,100,250,140]"], bbox=[GT], round_digits=None)[0]
    c = R.gaussian_coverage_reward(None, ["[150,100,250,140]"], bbox=[GT], round_digits=None)[0]
    assert p == pytest.approx(math.exp(-0.5), rel=1e-9)
    assert c == pytest.approx(math.exp(-0.125), rel=1e-6)


@pytest.mark.parametrize("s", [0.25, 0.5, 0.8, 1.5, 3.0])
def test_concentric_closed_form(s):
    cx, cy, w, h = 150.0, 120.0, 100.0, 40.0
    pred = [cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2]
    c = R.coverage_score(pred, GT, eps_inv=0.0, eps_det=0.0)
    assert c == pytest.approx(2 * s / (1 + s * s), rel=1e-9)
    # with the reference epsilons the difference is negligible at these scales
    assert R.coverage_score(pred, GT) == pytest.approx(2 * s / (1 + s * s), abs=1e-6)


def test_alpha_is_configurable():
    pred = "[150,100,250,140]"
    # sigma doubles with alpha=1 -> exponent / 4
    p = R.gaussian_point_reward(None, [pred], bbox=[GT], alpha=1.0, round_digits=None)[0]
    assert p == pytest.approx(math.exp(-0.125))


def test_rounding_is_configurable():
    p3 = R.gaussian_point_reward(None, ["[150,100,250,140]"], bbox=[GT])[0]
    pf = R.gaussian_point_reward(None, ["[150,100,250,140]"], bbox=[GT], round_digits=None)[0]
    assert p3 == 0.607 and pf != p3 and abs(pf - p3) < 1e-3


@pytest.mark.parametrize("comp", ["", "no box here", "[1,2,3]", "[a,b,c,d]", None])
def test_unparseable_is_zero(comp):
    for f in (R.gaussian_point_reward, R.gaussian_coverage_reward, R.point_in_box_reward, R.iou_reward,
              R.format_reward):
        assert f(None, [comp], bbox=[GT]) == [0.0]


def test_degenerate_boxes_defined():
    # zero-width ground truth: the reference divides by zero -> 0
    assert R.gaussian_point_reward(None, ["[100,100,200,140]"], bbox=[[100, 100, 100, 140]]) == [0.0]
    assert R.gaussian_coverage_reward(None, ["[100,100,200,140]"], bbox=[[100, 100, 100, 140]]) == [0.0]
    # zero-width prediction: R_cov ~ 0, R_point from the centre only (exp(-1/2) here)
    assert R.gaussian_coverage_reward(None, ["[100,100,100,140]"], bbox=[GT]) == [0.0]
    assert R.gaussian_point_reward(None, ["[100,100,100,140]"], bbox=[GT]) == [0.607]
    assert R.gaussian_point_reward(None, ["[150,120,150,120]"], bbox=[GT]) == [1.0]
    # inverted boxes: sigma is squared, so same as the upright box
    assert R.gaussian_reward(None, ["[200,140,100,100]"], bbox=[GT]) == [2.0]
    # off-screen and huge values: finite, zero
    big, huge = "1" + "0" * 300, "1" + "0" * 400  # 1e300 overflows when squared; 1e400 parses to inf
    for comp in ["[-5000,-5000,-4000,-4000]", f"[{big},1,{big}0,2]", f"[{huge},1,{huge}0,2]"]:
        for f in (R.gaussian_point_reward, R.gaussian_coverage_reward):
            v = f(None, [comp], bbox=[GT])[0]
            assert v == 0.0 and math.isfinite(v)
    # malformed ground truth
    assert R.gaussian_point_reward(None, ["[1,2,3,4]"], bbox=[None]) == [0.0]
    assert R.gaussian_point_reward(None, ["[1,2,3,4]"], bbox=[[1, 2, float("nan"), 4]]) == [0.0]


def test_parsing_follows_reference():
    # text after the last 'assistant\n', first [a,b,c,d] match, negatives/floats allowed
    comp = "user\n[0,0,1,1]\nassistant\nsure: [150,100,250,140] or [0,0,1,1]"
    assert R.gaussian_point_reward(None, [comp], bbox=[GT]) == [0.607]
    # trl conversational completions
    conv = [{"role": "assistant", "content": "[100,100,200,140]"}]
    assert R.gaussian_reward(None, [conv], bbox=[GT]) == [2.0]
    # Qwen2-VL box tokens
    assert R.gaussian_point_reward(None, ["<|box_start|>(100,100),(200,140)<|box_end|>"], bbox=[GT]) == [1.0]


def test_format_reward():
    comps = ["[1,2,3,4]", " [10, 20, 30, 40] ", "[1.5,2,3,4]", "box [1,2,3,4]", "[1,2,3,4] done", "[-1,2,3,4]"]
    assert R.format_reward(None, comps) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_sparse_baselines():
    comps = ["[100,100,200,140]", "[190,130,210,150]", "[195,135,215,155]", "[150,100,250,140]", "[300,300,310,310]"]
    # centres: (150,120) in; (200,140) on the corner (edges included); (205,145) out; (200,120) in; out
    assert R.point_in_box_reward(None, comps, bbox=[GT] * 5) == [1.0, 1.0, 0.0, 1.0, 0.0]
    # IoU: 1; 100/(4000+400-100); ...; shifted half: 2000/6000 = 1/3 (<= 0.5 -> 0)
    iou = R.iou_reward(None, comps, bbox=[GT] * 5, threshold=None)
    assert iou[0] == 1.0 and iou[3] == pytest.approx(1 / 3) and iou[4] == 0.0
    assert iou[1] == pytest.approx(100 / 4300)
    assert R.iou_reward(None, comps, bbox=[GT] * 5) == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_batch_and_column_errors():
    out = R.gaussian_reward(["p"] * 3, ["[100,100,200,140]", "x", "[150,100,250,140]"], bbox=[GT, GT, GT])
    assert out == [2.0, 0.0, pytest.approx(0.607 + 0.882)]
    with pytest.raises(ConfigError, match="bbox"):
        R.gaussian_point_reward(None, ["[1,2,3,4]"], box=[GT])
    assert R.gaussian_point_reward(None, ["[150,100,250,140]"], box=[GT], bbox_column="box") == [0.607]


def test_make_reward_funcs_names_and_options():
    fs = R.make_reward_funcs(["gaussian_point", "gaussian_coverage", "format"], alpha=1.0, round_digits=None,
                             threshold=0.3)
    assert [f.__name__ for f in fs] == ["gaussian_point", "gaussian_coverage", "format"]
    # trl passes extra columns and trainer_state etc. as kwargs
    v = fs[0](prompts=["p"], completions=["[150,100,250,140]"], completion_ids=[[1]], bbox=[GT],
              image_size=[[300, 200]], trainer_state=None)
    assert v == [pytest.approx(math.exp(-0.125))]
    with pytest.raises(ConfigError, match="valid choices"):
        R.make_reward_funcs(["gausian"])
