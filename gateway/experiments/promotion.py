"""Acting on an experiment's decision: promote a winner, roll back a guardrail breach, undo.

The one place a route's traffic is sent to one variant and back, for the admin API
(``POST /v1/experiments/{route}/promote`` and ``.../undo``) and for the automatic actions a
route's experiment declares (``on_decision: promote``, ``on_guardrail_breach: rollback``),
which are applied when the decision is evaluated: by ``GET /v1/experiments/{route}`` and by
``gateway report`` (``report`` below), not after each feedback (the analysis reads the route's
whole log, so running it per feedback would cost O(events) on the feedback path).

State: ``route_overrides`` holds the current promotion (what the router obeys, loaded in the
lifespan); ``experiment_actions`` holds every action ever taken (promote, rollback, undo; who:
``auto`` or ``admin``; the decision's reason; the time). Both are written before the router
changes, so a restart keeps the decision.

Rollback: routing has no per-variant redirect, only "all traffic to one variant", so rolling
back a breaching variant promotes the control; every variant's traffic then goes to the
control. Promoted traffic is assigned ``promoted`` and stays out of the comparison.

Automatic actions are taken at most once per route and kind: their id is fixed
(``auto:{route}:{kind}``) and the store keeps the first, so two replicas, or a replica and
``gateway report``, cannot both act. None is taken while the route is promoted, nor once any
action on it was undone: an undo means a person has taken charge.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gateway.config.routes import ExperimentSpec, RouteSpec
from gateway.errors import InvalidRequestError, StoreError
from gateway.events.sql import Store
from gateway.experiments.analysis import analyse
from gateway.routing.assignment import Router

log = logging.getLogger(__name__)

Kind = Literal["promote", "rollback", "undo"]
Actor = Literal["auto", "admin"]


@dataclass(frozen=True)
class Action:
    """One row of ``experiment_actions``."""

    id: str
    route: str
    action: Kind
    variant: str | None
    actor: Actor
    reason: str
    ts: float
    #: the id of the action an undo undid
    undoes: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load(store: Store) -> dict[str, str]:
    """The current promotions (route -> variant), read at start; none if the store is down."""
    try:
        return store.overrides()
    except StoreError as exc:
        log.warning("promotions not loaded (%s); routes use their configured weights", exc)
        return {}


def listed(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A route's actions as shown (report, API): oldest first, each marked ``undone`` or not."""
    undone = {r["undoes"] for r in rows if r["action"] == "undo" and r.get("undoes")}
    return [{**r, "undone": r["id"] in undone} for r in rows]


class Promotions:
    """Promotes, rolls back and undoes through one store; ``router`` (the running gateway's)
    follows each change, ``None`` for ``gateway report`` (the store only: a running gateway
    takes the change at its next evaluation of the route, or its next start)."""

    def __init__(self, store: Store, router: Router | None = None) -> None:
        self.store = store
        self.router = router

    def promote(
        self,
        route: str,
        spec: RouteSpec,
        variant: str,
        *,
        actor: Actor = "admin",
        reason: str = "promoted through the admin API",
        kind: Kind = "promote",
    ) -> Action:
        """All of ``route``'s traffic to ``variant``, persisted first, then recorded."""
        _check_variant(route, spec, variant)
        action = Action(_new_id(), route, kind, variant, actor, reason, time.time())
        self.store.set_override(route, variant, action.ts)
        self.store.write_action(action.as_dict())
        self._follow(route, variant)
        return action

    def undo(self, route: str, *, reason: str = "undone through the admin API") -> Action:
        """Back to the configured weights: the current promotion (or rollback) is undone."""
        current = self.store.overrides().get(route)
        if current is None:
            raise InvalidRequestError(
                f"Route '{route}' has no promotion to undo: it uses its configured weights.",
                param="route",
            )
        taken = [
            a
            for a in listed(self.store.actions(route))
            if a["action"] in ("promote", "rollback") and not a["undone"]
        ]
        action = Action(
            id=_new_id(),
            route=route,
            action="undo",
            variant=current,
            actor="admin",
            reason=reason,
            ts=time.time(),
            undoes=taken[-1]["id"] if taken else None,
        )
        self.store.clear_override(route)
        self.store.write_action(action.as_dict())
        self._follow(route, None)
        return action

    def sync(self, route: str) -> str | None:
        """The route's promotion as the store has it (another replica or ``gateway report``
        may have acted); the router follows it. Returns the promoted variant, if any."""
        current = self.store.overrides().get(route)
        self._follow(route, current)
        return current

    def report(self, route: str, spec: RouteSpec) -> dict[str, Any]:
        """The route's analysis, after applying the automatic action its decision calls for."""
        promoted = self.sync(route)
        events, feedback = self.store.events(route), self.store.feedback(route)
        actions = listed(self.store.actions(route))
        result = analyse(route, spec, events, feedback, promoted=promoted, actions=actions)
        taken = self.act(route, spec, result, actions)
        if taken is None:
            return result
        # The same data with the new promotion: the verdict says what was done.
        actions = listed(self.store.actions(route))
        return analyse(route, spec, events, feedback, promoted=taken.variant, actions=actions)

    def act(
        self,
        route: str,
        spec: RouteSpec,
        result: dict[str, Any],
        actions: Sequence[dict[str, Any]],
    ) -> Action | None:
        """The automatic action the decision calls for, taken; None when there is none."""
        experiment = spec.experiment or ExperimentSpec()
        decision = result["decision"]
        if result["promoted"] is not None or any(a["action"] == "undo" for a in actions):
            return None
        if decision["status"] == "winner" and experiment.on_decision == "promote":
            kind: Kind = "promote"
            variant = str(decision["winner"])
        elif decision["status"] == "guardrail_breach" and experiment.on_guardrail_breach == (
            "rollback"
        ):
            kind = "rollback"
            variant = str(result["control"])
        else:
            return None
        action = Action(
            f"auto:{route}:{kind}",
            route,
            kind,
            variant,
            "auto",
            str(decision["reason"]),
            time.time(),
        )
        # The id is fixed: write the action first, and act only if the one stored is this one
        # (another replica, or gateway report, may have taken it first).
        self.store.write_action(action.as_dict())
        stored = next((a for a in self.store.actions(route) if a["id"] == action.id), None)
        if stored is None or stored["ts"] != action.ts:
            return None
        self.store.set_override(route, variant, action.ts)
        self._follow(route, variant)
        log.warning("experiment %s: %s '%s' (auto): %s", route, kind, variant, action.reason)
        return action

    def _follow(self, route: str, variant: str | None) -> None:
        if self.router is None:
            return
        live = self.router.get(route)
        if live is not None:
            live.promoted = live.variants.get(variant) if variant is not None else None


def _check_variant(route: str, spec: RouteSpec, variant: str) -> None:
    if variant not in spec.variants:
        raise InvalidRequestError(
            f"Route '{route}' has no variant '{variant}'; it has {', '.join(spec.variants)}.",
            param="variant",
        )


def _new_id() -> str:
    return f"act-{secrets.token_hex(8)}"
