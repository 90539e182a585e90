"""The ``gateway`` command."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli.adapters import adapters_app
from gateway.cli.common import (
    CatchingGroup,
    console,
    err,
    fail,
    load_config_or_exit,
    resolve_or_exit,
)
from gateway.cli.datasets import datasets_app
from gateway.cli.eval import eval_command
from gateway.cli.experiments import experiments_app, report
from gateway.cli.pipelines import exemplars_app, pipelines_app
from gateway.settings import Settings
from gateway.telemetry.logs import configure_logging

if TYPE_CHECKING:
    from gateway.admission.http_guard import HttpGuard
    from gateway.config.schema import ServerSpec

app = typer.Typer(
    help="Switchboard: an OpenAI-compatible inference gateway.",
    no_args_is_help=True,
    # Every command's errors of the tree become one line and an exit status, here once.
    cls=CatchingGroup,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Prepare and list models.", no_args_is_help=True)
config_app = typer.Typer(help="Check configuration files.", no_args_is_help=True)
app.add_typer(models_app, name="models")
data_app = typer.Typer(help="Import labelled multiple-choice data.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(experiments_app, name="experiments")
app.add_typer(adapters_app, name="adapters")
app.add_typer(datasets_app, name="datasets")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(exemplars_app, name="exemplars")
keys_app = typer.Typer(
    help="Make API keys and their hashes for gateway.yaml.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.command("report")(report)
app.command("eval")(eval_command)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="gateway.yaml to use; default: the embedded default."),
]


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind; default from config.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind; default from config.")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="HTTP worker processes sharing one set of engines.")
    ] = 1,
    worker_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Start the gateway (and the vLLM engines it launches)."""
    import uvicorn

    from gateway.admission.http_guard import guarded_protocol
    from gateway.app import create_app
    from gateway.cli.workers import inherited_socket, run_workers, with_worker_urls
    from gateway.engines.factory import prepare_packaged_models

    settings = Settings()
    # A worker of `serve --workers` serves the models its parent launched at their URLs.
    cfg = with_worker_urls(load_config_or_exit(config or settings.config))
    resolved = resolve_or_exit(cfg, settings)
    bind_host = host or settings.host or cfg.server.host
    bind_port = port or settings.port or cfg.server.port
    # GATEWAY_LOG_FORMAT=json|text: JSON lines with one line per inference, or today's text.
    try:
        log_config = configure_logging(settings.log_level)
    except ValueError as exc:
        fail(str(exc))
    if not _is_loopback(bind_host) and not (cfg.auth.keys or settings.api_key):
        err.print(
            f"[yellow]warning:[/yellow] binding to {bind_host}: the gateway is reachable from "
            "other machines and has no API keys, so anyone there can use it, admin endpoints "
            "included. Fix: add keys under 'auth.keys' in gateway.yaml or set GATEWAY_API_KEY."
        )
    prepare_packaged_models(cfg, settings)
    if workers > 1:
        run_workers(
            cfg, settings, config_path=config or settings.config, host=bind_host,
            port=bind_port, workers=workers,
        )  # fmt: skip
        return
    guard = _http_guard(cfg.server, bind_host)
    server_config = uvicorn.Config(
        create_app(cfg, settings, resolved=resolved),
        host=bind_host,
        port=bind_port,
        log_level=settings.log_level,
        log_config=log_config,
        # uvicorn's httptools protocol with the bounds it lacks (header size, read timeouts,
        # connections, Host and Origin): gateway/admission/http_guard.py.
        http=guarded_protocol(guard),
        timeout_keep_alive=cfg.server.keep_alive_s,
        # SIGTERM: stop accepting, let in-flight requests and streams finish for this long,
        # then the lifespan flushes the event log and stops vLLM.
        timeout_graceful_shutdown=cfg.reliability.drain_timeout_s,
    )
    server = uvicorn.Server(server_config)
    # A worker is handed its parent's listening socket and binds nothing itself.
    server.run(sockets=[inherited_socket(worker_fd)] if worker_fd is not None else None)
    if not server.started:
        raise typer.Exit(code=3)  # uvicorn.run's exit status when the server could not start


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Option(help="The key's name in gateway.yaml and in events.")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: inference, feedback, admin.")
    ] = "inference,feedback",
) -> None:
    """Make a new API key: prints the key once, and the gateway.yaml entry with its hash."""
    from gateway.admission.keys import SCOPES, hash_key, new_key

    chosen = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        fail(f"--scopes: use some of {', '.join(SCOPES)}")
    key = new_key()
    # Plain echo: a wrapped key or hash would be copied wrong.
    typer.echo(f"key (shown once, give it to the client): {key}")
    typer.echo("gateway.yaml:")
    typer.echo(
        f"auth:\n  keys:\n    - name: {name}\n      hash: {hash_key(key)}\n"
        f"      scopes: [{', '.join(chosen)}]"
    )


@keys_app.command("hash")
def keys_hash() -> None:
    """Print the hash of a key read from standard input (kept out of the shell history)."""
    import sys

    from gateway.admission.keys import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        fail('no key on standard input; e.g. printf %s "$KEY" | gateway keys hash')
    typer.echo(hash_key(key))


@models_app.command("prepare")
def models_prepare(
    name: Annotated[str, typer.Argument(help="Packaged model to prepare.")] = (
        "smollm2-135m-instruct"
    ),
    force: Annotated[bool, typer.Option(help="Convert again even if prepared.")] = False,
) -> None:
    """Convert a packaged model into a safetensors folder under $GATEWAY_HOME/models."""
    from gateway.engines.packaged import prepare_model

    settings = Settings()
    folder = prepare_model(settings.models_dir, name, force=force, console=console)
    console.print(f"prepared: {folder}")


@models_app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """List the models a config serves."""
    cfg = load_config_or_exit(config)
    for name, spec in cfg.models.items():
        console.print(f"{name}\t{spec.engine}")


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="The gateway.yaml to check.")]) -> None:
    """Validate a config file (schema and references) without starting anything."""
    cfg = resolve_or_exit(load_config_or_exit(file), Settings()).config
    console.print(f"{file}: OK ({len(cfg.models)} models: {', '.join(cfg.models)})")


@data_app.command("import")
def data_import(
    source: Annotated[str, typer.Argument(help="mmlu (medical topics) or medmcqa.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write.")],
    split: Annotated[
        str, typer.Option(help="train, heldout or all (the fixed 70/30 split by item id).")
    ] = "all",
    all_topics: Annotated[bool, typer.Option(help="mmlu: every topic, not only medical.")] = False,
) -> None:
    """Convert a packaged data set to the labelled multiple-choice JSONL format."""
    from gateway import datasets

    if split not in ("train", "heldout", "all"):
        fail(f"--split is '{split}'; use train, heldout or all")
    if source == "mmlu":
        items = datasets.import_mmlu(medical_only=not all_topics)
    elif source == "medmcqa":
        items = datasets.import_medmcqa(Settings().home / "cache")
    else:
        fail(f"unknown data set '{source}'; use mmlu or medmcqa")
    count = datasets.write_items(datasets.select(items, split), out)  # type: ignore[arg-type]
    console.print(f"wrote {count} of {len(items)} {source} items ({split}) to {out}")


def _http_guard(spec: ServerSpec, bind_host: str) -> HttpGuard:
    import resource

    from gateway.admission.http_guard import HttpGuard, raise_descriptor_limit

    if spec.raise_fd_limit:
        descriptors = raise_descriptor_limit()
    else:
        descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    guard = HttpGuard.from_spec(spec, bind_host, descriptors)
    if not spec.allowed_hosts and bind_host in ("0.0.0.0", "::", ""):
        err.print(
            f"[yellow]warning:[/yellow] binding to {bind_host} with no 'server.allowed_hosts': "
            "requests must name a loopback Host. Fix: list the names clients use (or '*')."
        )
    if spec.max_connections is None and guard.max_connections < 64:
        err.print(
            f"[yellow]warning:[/yellow] the open-file limit is {descriptors}: at most "
            f"{guard.max_connections} client connections. Raise it (ulimit -n)."
        )
    return guard


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main() -> None:
    app()
