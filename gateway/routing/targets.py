"""The names a variant or a client may call, and the target each one runs on."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.adapters.serving import AdapterServing
from gateway.engines.base import Engine
from gateway.engines.target import Target, base_target
from gateway.errors import ModelNotFoundError


class Targets:
    """Base models (one engine each) and the adapters served on them."""

    def __init__(self, engines: Mapping[str, Engine], adapters: AdapterServing) -> None:
        self.engines = engines
        self.adapters = adapters
        # Base targets never change: built once, not on every lookup of every request.
        self._bases = {name: base_target(name, engine) for name, engine in engines.items()}

    def names(self) -> set[str]:
        """Every name a variant or a client may use as a target."""
        return set(self.engines) | set(self.adapters.names())

    def resolve(self, name: str) -> Target:
        """The target ``name`` calls: a base model or an adapter; 404 for anything else."""
        target = self._bases.get(name) or self.adapters.target(name)
        if target is None:
            raise ModelNotFoundError(name)
        return target
