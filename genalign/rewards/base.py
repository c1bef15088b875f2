"""The reward protocol.

A reward is a callable that scores a batch of generated samples::

    scores = reward(samples, prompts, metadata)   # -> torch.Tensor of shape (N,), float32

* ``samples`` — images as a float tensor (N, 3, H, W) in [0, 1], or waveforms (N, C, L) in [-1, 1].
* ``prompts`` — list of N strings; ``metadata`` — list of N dicts (may carry labels, boxes, ...).
* One score per sample; ``NaN`` means "not applicable to this sample" (e.g. an OCR reward on a prompt
  without quoted text). Aggregation treats NaN as missing, never as a number.
* ``scope`` — ``"sample"`` (each score depends on its sample only), ``"group"`` (on the samples of the same
  prompt), or ``"set"`` (on the whole batch, gathered across processes, e.g. a Fréchet distance to an
  exemplar set). The trainer calls ``group`` and ``set`` rewards on gathered batches.
* ``differentiable`` — True when the score is a differentiable function of ``samples`` (usable for direct
  reward back-propagation); such rewards must not detach or leave torch.
* ``modality`` — ``"image"``, ``"audio"`` or ``"any"`` (modality-agnostic: e.g. a set reward whose encoder decides,
  or a remote reward told what to send). :meth:`Reward.declared_modality` gives it from the config args without
  building the reward, so that config validation can refuse a reward that cannot score the model's outputs.

Rewards never know which algorithm uses them. Heavy models load lazily on first call, on the device that
``to(device)`` gave (the trainer calls it once).
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import GenalignError, RewardError


class Reward:
    """Base class for rewards. Subclasses implement :meth:`score`."""

    scope: str = "sample"  # sample | group | set
    differentiable: bool = False
    modality: str = "image"  # image | audio | any
    registry_name: str = "reward"

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    @property
    def name(self) -> str:
        return getattr(self, "_name", None) or self.registry_name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @classmethod
    def declared_modality(cls, args: Optional[Dict[str, Any]] = None) -> str:
        """The modality this reward scores with these config args (default: the class's ``modality``)."""
        return cls.modality

    def to(self, device) -> "Reward":
        self.device = torch.device(device)
        return self

    def score(self, samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Dict[str, Any]]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self,
        samples: torch.Tensor,
        prompts: Sequence[str],
        metadata: Optional[Sequence[Dict[str, Any]]] = None,
    ) -> torch.Tensor:
        if metadata is None:
            metadata = [{} for _ in prompts]
        if len(prompts) != samples.shape[0] or len(metadata) != samples.shape[0]:
            raise ValueError(
                f"reward '{self.name}': got {samples.shape[0]} samples, {len(prompts)} prompts, "
                f"{len(metadata)} metadata entries"
            )
        try:  # the boundary to user code: whatever it raises comes back as one line naming the reward
            if self.differentiable:
                out = self.score(samples, prompts, metadata)
            else:
                with torch.no_grad():
                    out = self.score(samples.detach(), prompts, metadata)
        except RewardError:
            raise  # a reward inside this one failed, and is named already
        except Exception as e:  # noqa: BLE001 - re-raised with the reward's name; the original is the __cause__
            raise _reward_error(e)(f"{self._who()} raised {type(e).__name__}: {_one_line(e)}"
                                   + ("" if isinstance(e, GenalignError) else " (GENALIGN_DEBUG=1 shows where)")) from e
        return self._check_output(out, samples.shape[0])

    def _who(self) -> str:
        return f"reward '{self.name}' ({class_path(self)})"

    def _check_output(self, out, n: int) -> torch.Tensor:
        """One number per sample, real-valued, no ±inf (NaN is allowed: "not applicable to this sample")."""
        expected = f"expected a ({n},) tensor of numbers, NaN where not applicable"
        if not torch.is_tensor(out):
            try:
                out = torch.as_tensor(out)
            except (TypeError, ValueError, RuntimeError):
                raise RewardError(f"{self._who()} returned {_describe(out)}; {expected}") from None
        if not (out.dtype.is_floating_point or out.dtype in _INT_DTYPES):
            raise RewardError(f"{self._who()} returned a {out.dtype} tensor; {expected}")
        out = out.float()
        if out.shape != (n,):
            raise RewardError(f"{self._who()} returned shape {tuple(out.shape)}; {expected}")
        inf = torch.isinf(out.detach())
        if inf.any():
            raise RewardError(f"{self._who()} returned {int(inf.sum())} infinite score(s) of {n}; scores must be "
                              f"finite, or NaN for 'not applicable'")
        return out


class LearnableReward(Reward):
    """A reward with trained parts (Adv-GRPO's discriminator, a preference head...).

    Scoring (``__call__``) stays gradient-free and pure. Training is the reward's own business, run by the trainer:

    * ``parts()`` -> ``{name: PartSpec(module, lr=..., betas=...)}``: the trained networks and their optimiser
      defaults (a config section ``train.parts.<name>`` overrides them). The trainer prepares them with accelerate
      (gradients averaged across processes), steps, clips, and checkpoints them with the run.
    * ``phases(iteration)`` -> the phases to add on a training iteration (default: every part steps once per
      iteration on the current rollout). Return ``exclusive=True`` phases for iterations on which only the reward
      trains (e.g. 9 discriminator-only iterations per generator iteration).
    * ``losses(view, batch, items)`` yields ``(loss, stats)`` backward units for the micro-batch ``items`` (indices
      into ``batch.rollout``, this process's samples); forward through ``view.module(part)`` so that distributed
      hooks fire. ``units(batch, items)`` is how many units it yields (the trainer averages them).
    * ``state_dict()`` / ``load_state_dict()``: non-parameter state (counters, running statistics) as tensors.
    """

    learnable = True
    monitor = False  # True: the trainer logs monitors() every iteration

    def parts(self) -> Dict[str, Any]:
        raise NotImplementedError

    def phases(self, iteration: int) -> List[Any]:
        from ..core.phases import Phase

        return [Phase(tuple(self.parts()), needs=frozenset({"rollout"}))]

    def items(self, view, batch) -> List[Any]:
        """This process's training items (default: the indices of its samples in ``batch.rollout``)."""
        return list(range(len(batch)))

    def units(self, batch, items) -> int:
        return 1

    def losses(self, view, batch, items):
        raise NotImplementedError

    def monitors(self, samples: torch.Tensor, prompts: Sequence[str],
                 metadata: Optional[Sequence[dict]] = None) -> Dict[str, float]:
        """Gradient-free statistics of the current generations (e.g. a discriminator's accuracy); when ``monitor``
        is set the trainer calls it on every iteration's gathered rollout after the reward's phases and logs
        ``monitor/<reward>/<key>``."""
        return {}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        pass


_INT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def class_path(obj) -> str:
    """``module.Qualname`` of a reward (of the wrapped function for a function reward)."""
    target = getattr(obj, "fn", None) if isinstance(obj, FunctionReward) else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


_MIXED: Dict[type, type] = {}


def _reward_error(e: BaseException) -> type:
    """The class to re-raise ``e`` as: a RewardError that is also ``type(e)`` when that is a GenalignError (so that
    ``except CheckpointError`` around a reward call keeps working), else a plain RewardError."""
    cls = type(e)
    if not isinstance(e, GenalignError):
        return RewardError
    if cls not in _MIXED:
        _MIXED[cls] = type(cls.__name__, (RewardError, cls), {"__module__": cls.__module__})
    return _MIXED[cls]


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] + (" ..." if len(lines) > 1 else "")) if lines else "(no message)"


def _describe(out) -> str:
    text = repr(out)
    return f"{type(out).__name__} {text[:60] + '...' if len(text) > 60 else text}"


SIGNATURE = "(samples, prompts, metadata) -> (N,) scores"


class FunctionReward(Reward):
    """A plain function used as a reward: ``fn(samples, prompts, metadata) -> (N,) scores``.

    Extra config arguments are passed to ``fn`` as keyword arguments. The function may declare ``scope``,
    ``differentiable`` and ``modality`` as attributes (defaults: sample, False, any).
    """

    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs
        self.scope = getattr(fn, "scope", "sample")
        self.differentiable = bool(getattr(fn, "differentiable", False))
        self.modality = getattr(fn, "modality", "any")
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def score(self, samples, prompts, metadata):
        return self.fn(samples, prompts, metadata, **self.kwargs)


def _check_function_signature(fn, name: str, args: Dict[str, Any]) -> None:
    """A plain function reward must take (samples, prompts, metadata) positionally, plus the config's args."""
    from ..errors import ConfigError

    bad = f"reward '{name}' is a function with signature {{sig}}; a function reward must have the signature {SIGNATURE}"
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to inspect, the first call's check applies
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    if not var_pos and len(positional) < 3:
        raise ConfigError(bad.format(sig=sig))
    clash = [p.name for p in positional[:3] if p.name in args]
    if clash:
        raise ConfigError(f"reward '{name}': argument '{clash[0]}' is the function's own parameter "
                          f"(the signature is {SIGNATURE}); it cannot be set in the config")
    required = [p for p in positional[3:] if p.default is p.empty and p.name not in args]
    required += [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in args]
    if required:
        raise ConfigError(bad.format(sig=sig) + f" (its extra parameter '{required[0].name}' has no value: give it "
                          f"in the reward's config arguments or a default)")


def build_reward(name: str, args: Optional[Dict[str, Any]] = None) -> Reward:
    """Instantiate a registered reward (or a dotted import path) with its config args.

    A dotted path may name a :class:`Reward` subclass or a plain function with the signature
    ``(samples, prompts, metadata) -> (N,) scores`` (wrapped in a :class:`FunctionReward`).
    """
    from ..config import check_kwargs, resolve_path
    from ..errors import ConfigError
    from ..registry import REWARDS

    cls = REWARDS.get(name)
    args = {k: resolve_path(v) for k, v in dict(args or {}).items()}  # shipped assets resolve from any directory
    if not inspect.isclass(cls):
        if not callable(cls):
            raise ConfigError(f"reward '{name}' names a {type(cls).__name__} object, not a Reward class or a function with "
                              f"the signature {SIGNATURE}")
        _check_function_signature(cls, name, args)
        check_kwargs(cls, args, f"reward '{name}'")
        return FunctionReward(cls, **args)
    check_kwargs(cls, args, f"reward '{name}'")
    try:
        obj = cls(**args)
    except GenalignError:
        raise
    except Exception as e:  # noqa: BLE001 - a user class's constructor: one line naming it
        raise RewardError(f"reward '{name}' ({cls.__module__}.{cls.__qualname__}) could not be built: "
                          f"{type(e).__name__}: {_one_line(e)}") from e
    if "registry_name" not in vars(cls):  # a dotted-path class: named after itself, not its base ("reward")
        obj.name = cls.__name__
    if not callable(obj):
        raise ConfigError(f"reward '{name}' is not callable")
    return obj


def build_rewards(specs) -> List[Reward]:
    out = []
    for spec in specs:
        r = build_reward(spec.name, spec.args)
        r.weight = float(spec.weight)
        out.append(r)
    return out
