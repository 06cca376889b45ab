"""What the app holds while it runs: the registry, the model workers, the rate limiter, the metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fastapi import HTTPException, status

from forwardguard.errors import ForwardguardError
from forwardguard.registry import Registry
from forwardguard.serve.limits import RateLimiter
from forwardguard.serve.metrics import Metrics
from forwardguard.serve.settings import ServeSettings
from forwardguard.serve.workers import ModelWorkers, ServedModel


@dataclass
class ServeState:
    settings: ServeSettings
    registry: Registry
    workers: ModelWorkers
    models: list[ServedModel]
    limiter: RateLimiter
    metrics: Metrics

    @classmethod
    def open(cls, settings: ServeSettings, metrics: Metrics) -> ServeState:
        """Open the registry (it must exist), load the models and start the workers (blocking)."""
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)  # for the whole process: it serves only this app
        registry = Registry.open(settings.registry)
        try:
            workers = ModelWorkers(
                specs=settings.models,
                device=settings.device,
                workers=settings.workers,
                queue_size=settings.queue_size,
                max_batch=settings.max_batch,
                registry=registry,
                metrics=metrics,
            )
            models = workers.start()
        except BaseException:
            registry.close()
            raise
        limiter = RateLimiter(per_minute=settings.rate_per_minute, burst=settings.rate_burst)
        return cls(settings=settings, registry=registry, workers=workers, models=models, limiter=limiter, metrics=metrics)

    def close(self) -> None:
        """Finish the queued work (its requests are answered), then close the registry."""
        self.workers.close(timeout_s=self.settings.request_timeout_s)
        self.registry.close()

    def resolve_model(self, name: str | None) -> ServedModel:
        """The served model a request names by spec or fingerprint (a prefix of 6+); the first by default."""
        if name is None or not name.strip():
            return self.models[0]
        name = name.strip()
        for model in self.models:
            if name == model.spec or (len(name) >= 6 and model.fingerprint.startswith(name.lower())):
                return model
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"model {name!r} is not served here (GET /v1/models lists the served models)",
        )

    def registry_problem(self) -> str | None:
        """None when the registry answers a query, else why not."""
        try:
            self.registry.list_patterns(limit=1)
        except ForwardguardError as error:
            return str(error)
        return None
