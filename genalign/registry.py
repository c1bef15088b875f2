"""Short name -> class registries, with dotted import paths for user-defined components.

    REWARDS.register("clip_score")(ClipScoreReward)
    REWARDS.get("clip_score")               # the class
    REWARDS.get("my_pkg.rewards:MyReward")  # a user's class, imported by path ("a.b:C" or "a.b.C")

An unknown name raises :class:`~genalign.errors.ConfigError` listing the valid names.
Registrations live next to the classes; ``_ensure_loaded`` imports the modules that hold them, lazily,
so that importing genalign stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Iterable, Optional

from .errors import ConfigError, choices


class Registry:
    def __init__(self, kind: str, modules: Iterable[str] = ()):  # modules whose import registers entries
        self.kind = kind
        self._entries: Dict[str, type] = {}
        self._modules = list(modules)
        self._loaded = False

    def register(self, name: str) -> Callable[[type], type]:
        def deco(obj):
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = obj
            obj.registry_name = name
            return obj

        return deco

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self._modules:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:  # a module of this tree not written (yet); never hide others
                if e.name != mod:
                    raise

    def names(self):
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def get(self, name: str):
        self._ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        if "." in name or ":" in name:
            return _import_path(name, self.kind)
        raise ConfigError(
            f"unknown {self.kind} '{name}'; valid choices: {choices(self._entries)} "
            f"(or a dotted import path such as 'my_pkg.module:MyClass')"
        )


def _import_path(path: str, kind: str):
    if ":" in path:
        mod_name, attr = path.split(":", 1)
    else:
        mod_name, _, attr = path.rpartition(".")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {kind} '{path}': module '{mod_name}' not found ({e})") from None
    obj: Optional[object] = mod
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"cannot import {kind} '{path}': '{mod_name}' has no attribute '{attr}'")
    return obj


REWARDS = Registry(
    "reward",
    modules=[
        "genalign.rewards.simple",
        "genalign.rewards.clip",
        "genalign.rewards.zoo",
        "genalign.rewards.distributional",
        "genalign.rewards.adversarial",
        "genalign.rewards.adversarial_pickscore",
        "genalign.rewards.remote",
        "genalign.rewards.audio",
        "genalign.toy.rewards",
        "genalign.tones.rewards",
        "genalign.gui.rewards",
    ],
)
ALGORITHMS = Registry(
    "algorithm",
    modules=[
        "genalign.algorithms.grpo",
        "genalign.algorithms.nft",
        "genalign.algorithms.marble",
        "genalign.algorithms.dragon",
        "genalign.algorithms.dmd2",
        "genalign.algorithms.gndm",
        "genalign.algorithms.rtdmd",
    ],
)
ENCODERS = Registry(  # embedding models of the distributional rewards (exemplar sets, FD/FAD)
    "encoder",
    modules=["genalign.rewards.encoders", "genalign.toy.encoders", "genalign.tones.encoders"],
)
MODELS = Registry(
    "model family",
    modules=["genalign.models.sd3", "genalign.models.flux", "genalign.models.sd",
             "genalign.models.stable_audio", "genalign.models.stable_audio3"],
)
