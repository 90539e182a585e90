"""Serving adapters: loading them into vLLM when needed, within its bounds, as targets.

- Lazily: an adapter is loaded through vLLM's runtime LoRA API the first time a request names
  it, at start when ``adapters.preload`` lists it, or by ``POST /v1/adapters/{name}/load``.
- Idempotently: one lock per name, so concurrent first requests cause one load.
- Within vLLM's bound: a model's vLLM holds at most ``--max-loras`` adapters (or
  ``--max-cpu-loras`` when larger). Loading one more first unloads the least recently used one;
  it is loaded again, transparently, the next time a request names it.
- After restarts: a restarted vLLM has lost what was loaded at runtime. The engine's
  ``generation`` changes when its supervisor restarts vLLM, which empties our view of it; and a
  vLLM that answers 404 for an adapter we thought loaded (one at URLs that restarted) is
  forgotten, so the next request loads it again.
- An admin's unload takes an adapter out of service: it is 404 until it is loaded again.
  Eviction (above) does not.
- On a fleet (several vLLM replicas of one model, ``engines/fleet.py``): each replica has its
  own slots. A request goes to a replica that holds its adapter when one does; otherwise the
  replica chosen for it loads it (evicting that replica's least recently used adapter), so an
  adapter is loaded where it is used, not on every replica. A replica that answers 404 for an
  adapter it held (restarted, or evicted by another gateway) loads it again and the request is
  retried there: the client sees no error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from gateway.adapters.manifest import Adapter
from gateway.adapters.registry import AdapterRegistry, check_name, lora_limits
from gateway.engines.base import Engine
from gateway.engines.fleet import Fleet, Replica
from gateway.engines.target import Target
from gateway.errors import AdapterNotFoundError, InvalidAdapterError, ModelNotFoundError

log = logging.getLogger(__name__)

AdapterState = Literal["loaded", "available", "unloaded"]


@runtime_checkable
class LoRAEngine(Protocol):
    """What an engine needs to serve adapters (``VLLMEngine`` has it)."""

    model_id: str
    on_model_missing: Callable[[str], None] | None

    @property
    def generation(self) -> int: ...

    async def load_lora(self, name: str, path: str) -> None: ...

    async def unload_lora(self, name: str) -> None: ...


@runtime_checkable
class FleetLoRAEngine(Protocol):
    """A ``LoRAEngine`` with replicas: adapters are loaded per replica (``VLLMEngine``)."""

    model_id: str
    fleet: Fleet
    ensure_adapter: Callable[[str, Replica], Awaitable[None]] | None
    adapter_missing: Callable[[str, Replica], None] | None

    @property
    def generation(self) -> int: ...

    async def load_lora(self, name: str, path: str, replica: Replica | None = None) -> None: ...

    async def unload_lora(self, name: str, replica: Replica | None = None) -> None: ...


@dataclass
class _OneReplica:
    """One replica of a fleet seen as a ``LoRAEngine``, so ``_Slots`` counts its adapters."""

    engine: FleetLoRAEngine
    replica: Replica
    on_model_missing: Callable[[str], None] | None = None
    model_id: str = ""

    def __post_init__(self) -> None:
        self.model_id = f"{self.engine.model_id} replica {self.replica.index}"

    @property
    def generation(self) -> int:
        return self.engine.generation + self.replica.generation

    async def load_lora(self, name: str, path: str) -> None:
        await self.engine.load_lora(name, path, self.replica)

    async def unload_lora(self, name: str) -> None:
        await self.engine.unload_lora(name, self.replica)


@dataclass
class _Slots:
    """The adapters one vLLM holds, least recently used first."""

    engine: LoRAEngine
    capacity: int | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    generation: int = 0
    loaded: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def has(self, name: str) -> bool:
        return self.engine.generation == self.generation and name in self.loaded

    def sync(self) -> None:
        if self.engine.generation != self.generation:
            if self.loaded:
                log.info(
                    "vLLM for %s was restarted; adapters %s load again on next use",
                    self.engine.model_id,
                    ", ".join(self.loaded),
                )
            self.loaded.clear()
            if isinstance(self.engine, _OneReplica):
                self.engine.replica.adapters.clear()
            self.generation = self.engine.generation

    def touch(self, name: str) -> None:
        if name in self.loaded:
            self.loaded.move_to_end(name)

    def forget(self, name: str) -> None:
        if isinstance(self.engine, _OneReplica):
            self.engine.replica.adapters.discard(name)
        if name in self.loaded:
            del self.loaded[name]
            log.warning("vLLM for %s no longer has adapter %s", self.engine.model_id, name)


class AdapterServing:
    def __init__(self, registry: AdapterRegistry, engines: Mapping[str, Engine]) -> None:
        self.registry = registry
        self._engines = engines
        self._slots: dict[str, _Slots] = {}
        #: a fleet's slots, per (base model, replica index)
        self._replica_slots: dict[tuple[str, int], _Slots] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._disabled: set[str] = set()
        #: seconds the last load of each adapter took (vLLM's load call)
        self.load_seconds: dict[str, float] = {}
        #: loads and evictions per adapter, read by /metrics when it is scraped
        self.loads: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()

    # -- what clients see -----------------------------------------------------------------------

    def names(self) -> list[str]:
        """Adapters a client may call now (registered and not taken out of service)."""
        return [a.name for a in self.registry.all() if a.name not in self._disabled]

    def state(self, name: str) -> AdapterState:
        if name in self._disabled:
            return "unloaded"
        adapter = self.registry.get(name)
        return "loaded" if adapter is not None and self._is_loaded(adapter) else "available"

    def target(self, name: str) -> Target | None:
        """The target for an adapter name, or None when no servable adapter has that name."""
        adapter = self.registry.get(name)
        if adapter is None or name in self._disabled:
            return None
        engine = self._engines[adapter.base_model]
        fleet = isinstance(engine, FleetLoRAEngine)
        if fleet:
            self._hook(engine)  # type: ignore[arg-type]
        return Target(
            name=name,
            engine=engine,
            upstream_model=name,
            base_model=adapter.base_model,
            adapter=name,
            # A fleet's engine loads the adapter on the replica it picks (``_hook``).
            prepare=None if fleet else functools.partial(self._prepare, name),
        )

    # -- loading --------------------------------------------------------------------------------

    async def _prepare(self, name: str) -> None:
        await self.ensure_loaded(name)

    async def ensure_loaded(self, name: str) -> float | None:
        """Load the adapter unless vLLM has it; return the seconds a load took (None: none)."""
        adapter = self.registry.get(name)
        if adapter is None or name in self._disabled:
            raise ModelNotFoundError(name)
        engine = self._engines.get(adapter.base_model)
        if isinstance(engine, FleetLoRAEngine):
            self._hook(engine)
            replica = engine.fleet.pick(adapter=name)
            return await self._ensure(adapter, self._slots_on(adapter, engine, replica))
        return await self._ensure(adapter, self._slots_for(adapter))

    async def _ensure(self, adapter: Adapter, slots: _Slots) -> float | None:
        name = adapter.name
        if name in self._disabled:
            raise ModelNotFoundError(name)
        if slots.has(name):
            slots.touch(name)
            return None
        # Concurrent first uses of one adapter wait here for one load, then take the fast path.
        async with self._locks[f"{name}@{slots.engine.model_id}"]:
            if slots.has(name):
                slots.touch(name)
                return None
            # One vLLM's slots are counted under one lock, so two loads never take the same one.
            async with slots.lock:
                slots.sync()
                if slots.capacity is not None:
                    while len(slots.loaded) >= slots.capacity:
                        victim = next(iter(slots.loaded))
                        await slots.engine.unload_lora(victim)
                        del slots.loaded[victim]
                        self.evictions[victim] += 1
                        log.info("adapter %s unloaded to make room for %s", victim, name)
                started = time.perf_counter()
                await slots.engine.load_lora(name, str(adapter.weights_dir))
                elapsed = time.perf_counter() - started
                slots.loaded[name] = None
        self.load_seconds[name] = elapsed
        self.loads[name] += 1
        log.info("adapter %s loaded into %s in %.2f s", name, adapter.base_model, elapsed)
        return elapsed

    async def load(self, name: str) -> float | None:
        """An admin's load: (re)read the adapter from its folder unless loaded, then load it.

        Reading it again is how a folder added while the gateway runs gets registered.
        """
        check_name(name)
        adapter = self.registry.get(name)
        if adapter is None or not self._is_loaded(adapter):
            self.registry.refresh(name)
        self._disabled.discard(name)
        return await self.ensure_loaded(name)

    async def unload(self, name: str) -> None:
        """An admin's unload: out of vLLM and out of service until loaded again."""
        check_name(name)
        adapter = self.registry.get(name)
        if adapter is None:
            raise AdapterNotFoundError(name)
        for slots in self._all_slots(adapter):
            async with self._locks[f"{name}@{slots.engine.model_id}"], slots.lock:
                slots.sync()
                if name in slots.loaded:
                    await slots.engine.unload_lora(name)
                    del slots.loaded[name]
                    if isinstance(slots.engine, _OneReplica):
                        slots.engine.replica.adapters.discard(name)
        self._disabled.add(name)
        log.info("adapter %s unloaded and out of service", name)

    async def preload(self, names: Iterable[str]) -> None:
        for name in names:
            await self.ensure_loaded(name)

    def rescan(self) -> list[str]:
        """Register adapter folders added since start; return the problems found."""
        problems = self.registry.scan(replace=False)
        for problem in problems:
            log.warning("adapter registry: %s", problem)
        return problems

    # -- internals ------------------------------------------------------------------------------

    def _is_loaded(self, adapter: Adapter) -> bool:
        engine = self._engines.get(adapter.base_model)
        if isinstance(engine, FleetLoRAEngine):
            return any(s.has(adapter.name) for s in self._all_slots(adapter))
        slots = self._slots.get(adapter.base_model)
        return slots is not None and slots.has(adapter.name)

    def _all_slots(self, adapter: Adapter) -> list[_Slots]:
        engine = self._engines.get(adapter.base_model)
        if isinstance(engine, FleetLoRAEngine):
            return [self._slots_on(adapter, engine, r) for r in engine.fleet.replicas]
        return [self._slots_for(adapter)]

    def _hook(self, engine: FleetLoRAEngine) -> None:
        """Let the engine load adapters on the replica it picks, and report lost ones."""
        if engine.ensure_adapter is not None:
            return

        async def ensure(name: str, replica: Replica) -> None:
            adapter = self.registry.get(name)
            if adapter is None:
                raise ModelNotFoundError(name)
            await self._ensure(adapter, self._slots_on(adapter, engine, replica))

        def missing(name: str, replica: Replica) -> None:
            adapter = self.registry.get(name)
            if adapter is not None:
                self._slots_on(adapter, engine, replica).forget(name)

        engine.ensure_adapter = ensure
        engine.adapter_missing = missing

    def _slots_on(self, adapter: Adapter, engine: FleetLoRAEngine, replica: Replica) -> _Slots:
        key = (adapter.base_model, replica.index)
        slots = self._replica_slots.get(key)
        if slots is None:
            view = _OneReplica(engine, replica)
            limits = lora_limits(self.registry.config, adapter.base_model)
            slots = self._replica_slots[key] = _Slots(
                engine=view, capacity=limits.max_loaded, generation=view.generation
            )
        return slots

    def _slots_for(self, adapter: Adapter) -> _Slots:
        base = adapter.base_model
        slots = self._slots.get(base)
        if slots is not None:
            return slots
        engine = self._engines.get(base)
        if not isinstance(engine, LoRAEngine):
            raise InvalidAdapterError(
                f"Adapter '{adapter.name}' needs model '{base}' on a vLLM engine.", param="name"
            )
        limits = lora_limits(self.registry.config, base)
        slots = self._slots[base] = _Slots(
            engine=engine, capacity=limits.max_loaded, generation=engine.generation
        )
        engine.on_model_missing = slots.forget
        return slots
