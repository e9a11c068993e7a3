"""Settings read from M3PIPE_* environment variables; CLI flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "m3pipe"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="M3PIPE_", extra="ignore")

    broker_url: str | None = None
    model: str = "BAAI/bge-m3"
    cache_dir: Path = _default_cache_dir()
    # Seconds a hub download may take to answer before we give up with advice.
    hub_timeout: float = 10.0
    visibility_timeout: int = 3600
