"""What every ``gateway`` command shares: the consoles, loading the config, one way to fail.

Commands do not catch the error tree (``gateway.errors``) themselves: the root command's group,
``CatchingGroup``, catches any ``SwitchboardError`` once and prints it as one ``error: ...``
line on stderr, exiting with the error's ``exit_code`` (2 for bad input or configuration, 1 for
a failure while running), without a traceback. The messages already name the file, the key and
the fix; printing them is all that is left to do here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# Typer (0.29) vendors click: its groups take the vendored Context, not click's own.
from typer._click.core import Context
from typer.core import TyperGroup

from gateway.config.loader import load_config
from gateway.config.schema import GatewayConfig
from gateway.errors import ConfigError, SwitchboardError
from gateway.resolve import Resolved, resolve
from gateway.settings import Settings

#: Results (tables, reports, what was written) go to stdout, so that they can be piped.
console = Console()
#: Errors, warnings and progress go to stderr.
err = Console(stderr=True)


def print_error(message: str) -> None:
    """One ``error: ...`` line on stderr.

    Messages quote names and patterns such as ``[a-z0-9]``: never read them as rich markup. A
    soft wrap keeps a long message one line (the terminal folds it at its width), so that a
    path or a key in it is never split by a hard line break.
    """
    err.print("[red]error:[/red]", escape(message), highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Stop the command: ``message`` on stderr, exit status ``code`` (2: the user's input)."""
    print_error(message)
    raise typer.Exit(code)


def exit_with(exc: SwitchboardError) -> NoReturn:
    """Stop the command on an error of the tree, with the status its class gives."""
    fail(message_of(exc), exc.exit_code)


def message_of(exc: SwitchboardError) -> str:
    """The error as the terminal shows it after ``error:``.

    A config with one problem reads best on one line (the file, then the key and the fix);
    several stay ``ConfigError``'s list, one problem a line.
    """
    if isinstance(exc, ConfigError) and len(exc.problems) == 1:
        return f"{exc.source}: {exc.problems[0]}"
    return str(exc)


def load_config_or_exit(path: Path | None) -> GatewayConfig:
    """Phase 1: ``path`` (else ``GATEWAY_CONFIG``, else the embedded default), parsed."""
    try:
        return load_config(path or Settings().config)
    except SwitchboardError as exc:
        exit_with(exc)


def resolve_or_exit(config: GatewayConfig, settings: Settings) -> Resolved:
    """Phase 2: every reference of ``config`` checked (templates, adapters, banks, weights)."""
    try:
        return resolve(config, settings)
    except SwitchboardError as exc:
        exit_with(exc)


class CatchingGroup(TyperGroup):
    """The root command: any error of the tree becomes one line and an exit status.

    Catching here rather than around ``app()`` in ``main()`` covers every way the command is
    invoked, typer's ``CliRunner`` in the tests included: sub-commands run inside this call.
    """

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwitchboardError as exc:
            exit_with(exc)
