"""The service's settings: one class, from the command line, else ``FORWARDGUARD_SERVE_*`` variables.

Nothing in the OpenAPI document depends on them: the limits are enforced by the handlers, so the
committed document describes every deployment.
"""

from __future__ import annotations

from typing import Any, get_origin

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from forwardguard.errors import ForwardguardError


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORWARDGUARD_SERVE_", frozen=True, extra="forbid", allow_inf_nan=False)

    registry: str = Field(description="The registry every immunized image is recorded in (path or URL).")
    models: list[str] = Field(min_length=1, description="Model specs the service immunizes against; the first is the default.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="0: any free port (the log says which).")
    workers: int = Field(1, ge=1, le=64, description="Model worker threads, each with its own instance of every model.")
    device: str = Field("auto", description="auto, cpu or cuda.")
    torch_threads: int | None = Field(
        None, ge=1, description="Threads torch uses for the model work on the CPU (unset: torch's default, the cores)."
    )
    max_pixels: int = Field(
        4_000_000, ge=1, description="Largest width x height of an upload once padded to the model's multiple (413 beyond)."
    )
    max_upload_mb: float = Field(20.0, gt=0, description="Largest request body in MiB (413 beyond).")
    max_steps: int = Field(500, ge=0, description="Most PGD steps a request may ask for.")
    default_steps: int | None = Field(
        None, ge=0, description="PGD steps when a request names none (unset: the paper's 200, or max_steps if lower)."
    )
    max_eps: float = Field(32 / 255, gt=0, le=1, description="Largest L-inf budget a request may ask for.")
    queue_size: int = Field(64, ge=1, description="Requests waiting for a model worker before new ones get 503.")
    max_batch: int = Field(8, ge=1, description="Most waiting requests of one size and settings attacked as one batch.")
    rate_per_minute: float = Field(60.0, gt=0, description="Sustained requests per minute per API key (429 beyond).")
    rate_burst: int = Field(10, ge=1, description="Requests a key may make at once before the rate applies.")
    request_timeout_s: float = Field(300.0, gt=0, description="Longest wait for an immunization (504 beyond, nothing recorded).")
    upload_timeout_s: float = Field(60.0, gt=0, description="Longest time to receive a request body (408 beyond).")
    max_connections: int = Field(
        256, ge=1, description="Connections and requests in progress at once (503 beyond): bounds what slow clients hold."
    )

    @model_validator(mode="after")
    def _steps_within_limit(self) -> ServeSettings:
        if self.default_steps is not None and self.default_steps > self.max_steps:
            raise ValueError(f"default_steps {self.default_steps} is over max_steps {self.max_steps}")
        return self

    @property
    def steps_when_unset(self) -> int:
        return min(200, self.max_steps) if self.default_steps is None else self.default_steps

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def load_settings(**given: Any) -> ServeSettings:
    """Settings from the given values (None: not given), the environment, then the defaults.

    Raises ForwardguardError naming the first invalid setting.
    """
    try:
        return ServeSettings(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        if first["type"] == "missing":
            raise ForwardguardError(f"{option_name(where)} is required (or FORWARDGUARD_SERVE_{where.upper()})") from None
        raise ForwardguardError(f"invalid serve setting {where}: {first['msg']}") from None


def option_name(setting: str) -> str:
    """The command-line option of a setting: its name in kebab case, a list's in the singular (the
    option is repeated: ``models`` -> ``--model``), without a unit suffix (``request_timeout_s`` ->
    ``--request-timeout``)."""
    if get_origin(ServeSettings.model_fields[setting].annotation) is list:
        setting = setting.removesuffix("s")
    return "--" + setting.removesuffix("_s").replace("_", "-")
