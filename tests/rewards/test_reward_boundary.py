"""Reward.__call__ is the boundary to user code: errors are one line naming the reward and its class path, the
output is checked (count, numeric dtype, no inf; NaN = not applicable), valid rewards behave as before."""

import pytest
import torch

from genalign.errors import CheckpointError, GenalignError, RewardError
from genalign.rewards.base import FunctionReward, Reward, build_reward


class Returns(Reward):
    def __init__(self, value=None):
        super().__init__()
        self.value = value

    def score(self, samples, prompts, metadata):
        return self.value


class Differentiable(Reward):
    differentiable = True

    def score(self, samples, prompts, metadata):
        return samples.sum(dim=(1, 2, 3))


class Outer(Reward):
    def score(self, samples, prompts, metadata):
        return Raising()(samples, prompts, metadata)


class Raising(Reward):
    def score(self, samples, prompts, metadata):
        raise CheckpointError("weights file 'x.safetensors' is truncated")


X = torch.rand(2, 3, 4, 4)


@pytest.mark.parametrize("value,expect", [
    (torch.tensor([1.0, float("nan")]), [1.0, float("nan")]),  # NaN: not applicable, allowed
    ([1, 2], [1.0, 2.0]),  # a list of ints
    (torch.tensor([True, False]), [1.0, 0.0]),  # bools count as 0/1
    (torch.tensor([3, 4], dtype=torch.int64), [3.0, 4.0]),
    (torch.tensor([0.5, 0.25], dtype=torch.float64), [0.5, 0.25]),
])
def test_valid_outputs_pass_as_float32(value, expect):
    out = Returns(value)(X, ["a", "b"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(expect), equal_nan=True)


@pytest.mark.parametrize("value,needle", [
    (torch.zeros(3), r"returned shape \(3,\); expected a \(2,\) tensor"),
    (torch.zeros(2, 1), r"returned shape \(2, 1\)"),
    (torch.tensor(1.0), r"returned shape \(\)"),
    (None, "returned NoneType None"),
    ({"a": 1}, "returned dict"),
    (torch.tensor([1.0, float("inf")]), r"returned 1 infinite score\(s\) of 2"),
    (torch.zeros(2, dtype=torch.complex64), "complex64 tensor"),
])
def test_invalid_outputs_are_one_line_errors_naming_the_reward(value, needle):
    with pytest.raises(RewardError, match=needle) as e:
        Returns(value)(X, ["a", "b"])
    msg = str(e.value)
    assert msg.startswith("reward 'reward' (test_reward_boundary.Returns) returned") and "\n" not in msg


def test_exceptions_name_the_reward_and_keep_genalign_types():
    class Boom(Reward):
        def score(self, samples, prompts, metadata):
            return {}["missing"]

    with pytest.raises(RewardError, match=r"^reward 'reward' \(.*Boom\) raised KeyError: 'missing'") as e:
        Boom()(X, ["a", "b"])
    assert isinstance(e.value.__cause__, KeyError)
    with pytest.raises(CheckpointError, match="raised CheckpointError: weights file 'x.safetensors' is truncated"):
        Raising()(X, ["a", "b"])  # callers catching CheckpointError still do
    with pytest.raises(RewardError, match=r"^reward 'reward' \(.*\.Raising\) raised") as e:
        Outer()(X, ["a", "b"])  # a reward inside another is named once, as the one that failed
    assert "Outer" not in str(e.value)


def test_differentiable_reward_keeps_its_gradient():
    x = X.clone().requires_grad_(True)
    Differentiable()(x, ["a", "b"]).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_function_rewards(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("fn_rewards")

    def brightness(samples, prompts, metadata, scale=1.0):
        return samples.mean(dim=(1, 2, 3)) * scale

    def by_varargs(*args):
        return torch.zeros(args[0].shape[0])

    def one_arg(samples):
        return samples.mean()

    def kw_only(samples, prompts, metadata, *, level):
        return torch.full((samples.shape[0],), float(level))

    brightness.__module__ = by_varargs.__module__ = one_arg.__module__ = kw_only.__module__ = "fn_rewards"
    mod.brightness, mod.by_varargs, mod.one_arg, mod.kw_only = brightness, by_varargs, one_arg, kw_only
    monkeypatch.setitem(sys.modules, "fn_rewards", mod)
    r = build_reward("fn_rewards:brightness", {"scale": 2.0})
    assert isinstance(r, FunctionReward) and r.name == "brightness" and r.scope == "sample"
    torch.testing.assert_close(r(X, ["a", "b"]), X.mean(dim=(1, 2, 3)) * 2)
    assert build_reward("fn_rewards:by_varargs")(X, ["a", "b"]).tolist() == [0.0, 0.0]
    assert build_reward("fn_rewards:kw_only", {"level": 3})(X, ["a", "b"]).tolist() == [3.0, 3.0]
    with pytest.raises(GenalignError, match=r"signature \(samples\); a function reward must have the signature "
                                            r"\(samples, prompts, metadata\) -> \(N,\) scores"):
        build_reward("fn_rewards:one_arg")
    with pytest.raises(GenalignError, match="extra parameter 'level' has no value"):
        build_reward("fn_rewards:kw_only")
    with pytest.raises(GenalignError, match="'prompts' is the function's own parameter"):
        build_reward("fn_rewards:brightness", {"prompts": ["x"]})
    with pytest.raises(RewardError, match=r"reward .brightness. \(fn_rewards\..*brightness\) raised TypeError"):
        build_reward("fn_rewards:brightness", {"scale": "x"})(X, ["a", "b"])
