"""Process settings, from the environment (``GATEWAY_*``). The config file is ``config.py``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the gateway keeps its state and how the process runs.

    ``home`` holds prepared models (``models/``), engine logs (``logs/``) and runtime files of
    launched engines (``run/``).
    """

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".cache" / "switchboard")
    config: Path | None = None
    # None: take them from the config file's ``server`` section.
    host: str | None = None
    port: int | None = None
    log_level: str = "info"
    #: one API key with every scope, kept out of the config file (GATEWAY_API_KEY)
    api_key: str | None = Field(default=None, repr=False)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"
