"""The application factory. All state lives on the app (built in the lifespan), none in modules."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.adapters.registry import load_registry
from gateway.adapters.serving import AdapterServing
from gateway.admission.keys import KeyRing
from gateway.admission.ratelimit import ConcurrencyGate
from gateway.api import adapters as adapters_api
from gateway.api import chat, evaluations, experiments, feedback, health, metrics, models
from gateway.api.access import scoped
from gateway.api.deps import GatewayState
from gateway.api.hot_path import ChatHotPath
from gateway.api.middleware import BodySizeLimit
from gateway.config.schema import PACKAGED_PREFIX, GatewayConfig, VLLMModel
from gateway.engines.factory import Engine, build_engine
from gateway.errors import ConfigError, GatewayError
from gateway.events.log import EventLog
from gateway.events.metrics import Metrics
from gateway.events.stores import StoreError, open_store
from gateway.pipelines.runner import PipelineRunner
from gateway.routing.assignment import Router, check_routes
from gateway.routing.dispatch import Dispatcher
from gateway.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    config: GatewayConfig,
    settings: Settings | None = None,
    *,
    engines: dict[str, Engine] | None = None,
) -> FastAPI:
    """Build the gateway. ``engines`` replaces the ones the config would build (tests)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Adapters are checked before vLLM starts: a bad adapter fails fast, not after 30 s.
        registry = load_registry(config, settings, "gateway.yaml")
        # Pipelines too: a broken template fails here, naming its file and line.
        runner = PipelineRunner.from_config(config)
        if engines is None and _routes_retrieve(config, runner):
            # A real serve whose routes use retrieval: load the embedding model (and torch,
            # ~350 MB) off the request path. Otherwise it loads on first use, if ever.
            runner.warm_up()
        built = engines if engines is not None else await build_engines(config, settings)
        await start_engines(built)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(_stop_engines, built)
            adapters = AdapterServing(registry, built)
            await adapters.preload(config.adapters.preload)
            events = await open_event_log(config, settings)
            stack.push_async_callback(events.stop)
            state = GatewayState(
                config=config,
                settings=settings,
                engines=built,
                events=events,
                router=Router(config, promotions=await _promotions(events)),
                metrics=Metrics(events),
                adapters=adapters,
                keyring=KeyRing.from_config(config.auth, settings.api_key),
                gate=ConcurrencyGate(config.limits.max_concurrency),
            )
            app.state.gateway = state
            state.runner = runner
            state.dispatcher = Dispatcher(
                config=config,
                router=state.router,
                resolve_target=state.target_for,
                events=events,
                metrics=state.metrics,
                runner=getattr(state, "runner", None),
            )
            stack.push_async_callback(state.dispatcher.drain_shadows)
            problems = check_routes(config, state.target_names(), _pipeline_names(state))
            if problems:
                raise ConfigError("gateway.yaml", problems)
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
    app.add_middleware(BodySizeLimit, max_bytes=config.limits.max_body_bytes)
    install_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # Health probes are open; chat checks its key itself, so refusals are logged as events.
    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(models.router, dependencies=scoped("inference"))
    app.include_router(feedback.router, dependencies=scoped("feedback"))
    for admin in (experiments, evaluations, metrics, adapters_api):
        app.include_router(admin.router, dependencies=scoped("admin"))
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
    events = EventLog(
        store,
        settings.home / "spool",
        durable=spec.durable,
        batch_size=spec.batch_size,
        flush_interval_s=spec.flush_interval_s,
        max_queue=spec.max_queue,
    )
    await events.start()
    return events


async def _promotions(events: EventLog) -> dict[str, str]:
    try:
        return await asyncio.to_thread(events.store.overrides)
    except StoreError as exc:
        log.warning("promotions not loaded (%s); routes use their configured weights", exc)
        return {}


def _routes_retrieve(config: GatewayConfig, runner: PipelineRunner) -> bool:
    names = set(runner.names())
    return any(
        runner.get(variant.pipeline).spec.retrieve is not None
        for route in config.routes.values()
        for variant in route.variants.values()
        if variant.pipeline in names
    )


def _pipeline_names(state: GatewayState) -> set[str]:
    runner = getattr(state, "runner", None)
    names = getattr(runner, "names", None)
    return set(names()) if callable(names) else {"plain"}


async def build_engines(config: GatewayConfig, settings: Settings) -> dict[str, Engine]:
    await asyncio.to_thread(prepare_packaged_models, config, settings)
    return {
        name: build_engine(name, spec, settings, config.base_dir)
        for name, spec in config.models.items()
    }


def prepare_packaged_models(config: GatewayConfig, settings: Settings) -> None:
    """Convert packaged models that are not prepared yet (a one-time step per machine)."""
    from gateway.engines.packaged import is_prepared, prepare_model

    for spec in config.models.values():
        if (
            isinstance(spec, VLLMModel)
            and spec.launch
            and spec.launch.model.startswith(PACKAGED_PREFIX)
        ):
            name = spec.launch.model.removeprefix(PACKAGED_PREFIX)
            if not is_prepared(settings.models_dir, name):
                prepare_model(settings.models_dir, name)


async def start_engines(engines: dict[str, Engine]) -> None:
    """Start every engine at once; if one fails, stop the others and raise its error."""
    results = await asyncio.gather(*(e.start() for e in engines.values()), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(e.stop() for e in engines.values()), return_exceptions=True)
        raise failures[0]


def install_error_handlers(app: FastAPI) -> None:
    """The one place errors become OpenAI's error JSON."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        body = {
            "message": f"Invalid request: {first.get('msg', 'bad input')}",
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
        return JSONResponse({"error": body}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = {"message": str(exc.detail), "type": kind, "param": None, "code": None}
        return JSONResponse({"error": body}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        body = {
            "message": "The gateway hit an internal error; it has been logged.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        return JSONResponse({"error": body}, status_code=500)
