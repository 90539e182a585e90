"""Which items each evaluated variant learned from: its adapter's training items, its bank.

A variant is a target (a model or an adapter) and a pipeline (whose exemplar bank, if any, it
is prompted with). Its learned ids are the union of the adapter's record (``learned_from.json``)
and the bank's exemplars; an evaluation leaves out the items whose content ids are among the
learned ids of any variant it compares, so the comparison stays paired (run.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.adapters.registry import AdapterRegistry
from gateway.config.schema import GatewayConfig
from gateway.learned import ADAPTER_FILE, mc_content_id, read_learned
from gateway.pipelines.loader import Pipeline, load_pipelines
from gateway.settings import Settings


@dataclass(frozen=True)
class VariantLearned:
    ids: frozenset[str] = frozenset()
    #: what is not known (an adapter trained before records were written)
    notes: tuple[str, ...] = field(default=())


def variant_learned(
    target: str,
    pipeline: str,
    registry: AdapterRegistry | None,
    pipelines: Mapping[str, Pipeline],
) -> VariantLearned:
    ids: set[str] = set()
    notes: list[str] = []
    adapter = registry.get(target) if registry is not None else None
    if adapter is not None:
        record = read_learned(adapter.folder / ADAPTER_FILE)
        if record is None:
            notes.append(
                f"adapter '{target}' has no {ADAPTER_FILE} (trained before they were written): "
                "only the packaged data's fixed split is known to be unseen by it"
            )
        else:
            ids |= record.ids
    found = pipelines.get(pipeline)
    if found is not None and found.bank is not None:
        # The bank in memory is exactly what the pipeline prompts with.
        ids |= {mc_content_id(e.question, e.options) for e in found.bank.exemplars}
    return VariantLearned(frozenset(ids), tuple(notes))


def learned_from_config(
    config: GatewayConfig, settings: Settings, targets: Mapping[str, tuple[str, str]]
) -> dict[str, VariantLearned]:
    """Per variant name, from ``(target, pipeline)``: read without starting any engine."""
    registry = AdapterRegistry(config, settings)
    registry.scan()
    pipelines = load_pipelines(config)
    return {
        name: variant_learned(target, pipeline, registry, pipelines)
        for name, (target, pipeline) in targets.items()
    }
