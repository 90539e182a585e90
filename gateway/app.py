"""The application factory. All state lives on the app (built in the lifespan), none in modules."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from gateway import __version__
from gateway.adapters.serving import AdapterServing
from gateway.admission.keys import KeyRing
from gateway.admission.ratelimit import ConcurrencyGate, RateLimiter
from gateway.api import adapters as adapters_api
from gateway.api import (
    chat,
    evaluations,
    experiment_history,
    experiments,
    feedback,
    health,
    inferences,
    metrics,
    models,
    ui,
)
from gateway.api.access import scoped
from gateway.api.errors import install_error_handlers
from gateway.api.hot_path import PATH as chat_path
from gateway.api.hot_path import ChatHotPath
from gateway.api.metrics import StateCollector
from gateway.api.middleware import RequestGuard
from gateway.config.schema import GatewayConfig
from gateway.engines.factory import Engine, build_engines, start_engines
from gateway.events.log import EventLog
from gateway.events.metrics import Metrics
from gateway.events.stores import open_store
from gateway.experiments import promotion
from gateway.pipelines.runner import PipelineRunner
from gateway.resolve import Resolved, resolve
from gateway.routing.assignment import Router
from gateway.routing.dispatch import Dispatcher
from gateway.routing.targets import Targets
from gateway.settings import Settings
from gateway.state import GatewayState
from gateway.state_store.wiring import open_shared
from gateway.telemetry.tracing import Tracing

log = logging.getLogger(__name__)


def create_app(
    config: GatewayConfig,
    settings: Settings | None = None,
    *,
    resolved: Resolved | None = None,
    engines: Mapping[str, Engine] | None = None,
) -> FastAPI:
    """Build the gateway.

    ``resolved``: ``config`` already resolved (by ``gateway serve``); else the lifespan resolves
    it. ``engines`` replaces the ones the config would build (tests).
    """
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every reference is checked before vLLM starts: a bad adapter, template or route
        # fails fast, not after 30 s. ``gateway serve`` resolved it already: not again.
        ready = resolved if resolved is not None else resolve(config, settings)
        runner = PipelineRunner(ready.pipelines)
        if engines is None and _routes_retrieve(config, runner):
            # A real serve whose routes use retrieval: load the embedding model (and torch,
            # ~350 MB) off the request path. Otherwise it loads on first use, if ever.
            runner.warm_up()
        built = dict(engines) if engines is not None else await build_engines(config, settings)
        await start_engines(built)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(_stop_engines, built)
            adapters = AdapterServing(ready.registry, built)
            await adapters.preload(config.adapters.preload)
            events = await open_event_log(config, settings)
            # Flushing the log gets at most the drain budget; what is left then is spooled.
            stack.push_async_callback(
                events.stop, min(10.0, float(config.reliability.drain_timeout_s))
            )
            # Promotions and rollbacks (experiments/promotion.py) survive restarts.
            promotions = await asyncio.to_thread(promotion.load, events.store)
            router = Router(config, promotions=promotions)
            metrics = Metrics(events, pipelines=runner.names())
            # Off (no exporter, no SDK) unless an OTLP endpoint is configured.
            tracing = Tracing.from_config(config.telemetry)
            stack.callback(tracing.shutdown)
            targets = Targets(built, adapters)
            # state.url: limits, cooldowns and the retry budget shared through Redis.
            shared = await open_shared(config, metrics.state_down)
            if shared is not None:
                stack.push_async_callback(shared.close)
            dispatcher = Dispatcher(
                budget=shared.budget if shared else None,
                cooldowns=shared.cooldowns if shared else None,
                config=config,
                router=router,
                targets=targets,
                events=events,
                metrics=metrics,
                runner=runner,
            )
            stack.push_async_callback(dispatcher.drain_shadows)
            app.state.gateway = GatewayState(
                config=config,
                settings=settings,
                engines=built,
                events=events,
                router=router,
                metrics=metrics,
                adapters=adapters,
                targets=targets,
                runner=runner,
                dispatcher=dispatcher,
                keyring=KeyRing.from_config(config.auth, settings.api_key),
                limiter=shared.limiter if shared else RateLimiter(),
                gate=ConcurrencyGate(config.limits.max_concurrency),
                started_at=time.time(),
                tracing=tracing,
            )
            metrics.registry.register(StateCollector(app.state.gateway))
            # Everything built so far lives as long as the process: keep the garbage collector
            # from walking it again and again (a full pass over the imported libraries took
            # 37 ms and set the p99 of added latency).
            gc.freeze()
            yield

    app = FastAPI(
        title="Switchboard",
        version=__version__,
        summary="OpenAI-compatible inference gateway",
        lifespan=lifespan,
    )
    # Starlette runs the last added outermost: the body limit sees every request first.
    app.add_middleware(ChatHotPath)
    app.add_middleware(
        RequestGuard,
        max_bytes=config.limits.max_body_bytes,
        body_timeout_s=config.server.body_timeout_s,
        skip=chat_path,  # the chat handler bounds its own body, so each refusal is an event
    )
    if config.server.cors_origins:
        # Off unless configured: only these origins get CORS answers (and preflights).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.server.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    install_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # Health probes are open; chat checks its key itself, so refusals are logged as events.
    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(models.router, dependencies=scoped("inference"))
    app.include_router(feedback.router, dependencies=scoped("feedback"))
    for admin in (experiments, evaluations, metrics, adapters_api):
        app.include_router(admin.router, dependencies=scoped("admin"))
    # The console: its static pages are open (they hold no data), what they read is admin.
    for console in (experiment_history, inferences):
        app.include_router(console.router, dependencies=scoped("admin"))
    app.include_router(ui.router)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without the 422 it adds to every operation: this gateway answers 400."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


async def _stop_engines(engines: dict[str, Engine]) -> None:
    await asyncio.gather(*(e.stop() for e in engines.values()), return_exceptions=True)


async def open_event_log(config: GatewayConfig, settings: Settings) -> EventLog:
    spec = config.events
    store = await asyncio.to_thread(open_store, spec.url, settings.home / "events.db")
    # Workers of `serve --workers` spool apart: one spool file has one writer.
    worker = os.environ.get("GATEWAY_WORKER")
    events = EventLog(
        store,
        settings.home / "spool" / f"worker-{worker}" if worker else settings.home / "spool",
        durable=spec.durable,
        batch_size=spec.batch_size,
        flush_interval_s=spec.flush_interval_s,
        max_queue=spec.max_queue,
    )
    await events.start()
    return events


def _routes_retrieve(config: GatewayConfig, runner: PipelineRunner) -> bool:
    names = set(runner.names())
    return any(
        runner.get(variant.pipeline).spec.retrieve is not None
        for route in config.routes.values()
        for variant in route.variants.values()
        if variant.pipeline in names
    )
