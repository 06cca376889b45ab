"""Model work off the event loop: a bounded queue, worker threads, batches of alike requests.

Each worker thread holds its own instance of every served model. A worker takes the oldest waiting
job and every other waiting job with the same batch key (model, attack settings, image size, mask
or not), up to ``max_batch``, attacks them as one batch, then records each result in the registry
before the job's request is answered: an image is sent back only once its record is committed.

A job whose request timed out is dropped before it is recorded (see :meth:`ImmunizeJob.commit`),
and a batch whose jobs have all timed out stops at its next checkpoint, inside a PGD step
(:mod:`forwardguard.interrupt`): the worker is free again within one model pass.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

import numpy as np

from forwardguard.errors import ForwardguardError
from forwardguard.images import LoadedImage, encode_png
from forwardguard.immunize.attack import AttackSettings, ImmunizedImage, immunize
from forwardguard.immunize.recording import record_immunized
from forwardguard.interrupt import interruptible
from forwardguard.models.base import ImageModel
from forwardguard.models.load import load_model
from forwardguard.models.stable_diffusion import DiffusionModel
from forwardguard.registry import PatternRecord, Registry
from forwardguard.serve.metrics import Metrics

logger = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class ServedModel:
    spec: str
    fingerprint: str
    encode_multiple: int
    edit_multiple: int | None
    """The Stable Diffusion edit's multiple; None for an autoencoder (no diffusion attack)."""

    @property
    def diffusion(self) -> bool:
        return self.edit_multiple is not None

    @property
    def methods(self) -> tuple[str, ...]:
        """The diffusion attack needs a Stable Diffusion model's edit; the others any encoder."""
        return ("encoder", "noise", "diffusion") if self.diffusion else ("encoder", "noise")

    def multiple(self, method: str) -> int:
        """What an image's sides are padded to for ``method`` (see :func:`forwardguard.immunize.objectives.bucket_multiple`)."""
        return self.edit_multiple if method == "diffusion" and self.edit_multiple is not None else self.encode_multiple


@dataclass(frozen=True)
class BatchKey:
    """Jobs with equal keys are attacked together."""

    model: str
    settings: AttackSettings
    size: tuple[int, int]
    masked: bool


@dataclass(frozen=True)
class Immunized:
    """What a request gets back: the PNG sent and its committed record."""

    png: bytes
    record: PatternRecord


class QueueFull(Exception):
    """The bounded queue is full, or the service is shutting down."""


class NotRecorded(Exception):
    """The registry could not record the pattern: the image is not sent back."""


class _Abandoned(Exception):
    """Every job of a batch timed out: stop attacking."""


class ImmunizeJob:
    """One request's immunization, from the event loop to a worker and back.

    ``state`` moves pending -> running -> committing, or to cancelled (the request timed out)
    before committing; the lock makes cancelling and committing exclusive, so that a request is
    answered with an error exactly when nothing was recorded for it.
    """

    def __init__(
        self,
        *,
        key: BatchKey,
        image: LoadedImage,
        mask: np.ndarray | None,
        tenant: str,
        source: str | None,
        mask_name: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.key = key
        self.image = image
        self.mask = mask
        self.tenant = tenant
        self.source = source
        self.mask_name = mask_name
        self.done: asyncio.Future[Immunized] = loop.create_future()
        # An answer nobody waits for any more (the request timed out) is not an error to report.
        self.done.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._loop = loop
        self._state = "pending"
        self._lock = threading.Lock()

    def _move(self, allowed: tuple[str, ...], new: str) -> bool:
        with self._lock:
            if self._state not in allowed:
                return False
            self._state = new
            return True

    def start(self) -> bool:
        return self._move(("pending",), "running")

    def cancel(self) -> bool:
        """Give up on the job unless it is being recorded; True when nothing will be recorded."""
        return self._move(("pending", "running"), "cancelled")

    def commit(self) -> bool:
        """Claim the job for recording; False when its request has timed out meanwhile."""
        return self._move(("running",), "committing")

    @property
    def cancelled(self) -> bool:
        return self._state == "cancelled"

    def resolve(self, result: Immunized | None = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.done.done():
                return
            if error is not None:
                self.done.set_exception(error)
            else:
                assert result is not None  # every caller gives a result or an error
                self.done.set_result(result)

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop is closed: nobody is waiting
            pass


class ModelWorkers:
    """The queue and the worker threads; :meth:`start` loads the models, :meth:`close` drains."""

    def __init__(
        self,
        *,
        specs: list[str],
        device: str,
        workers: int,
        queue_size: int,
        max_batch: int,
        registry: Registry,
        metrics: Metrics,
    ) -> None:
        self._specs = specs
        self._device = device
        self._worker_count = workers
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._registry = registry
        self._metrics = metrics
        self._pending: list[ImmunizeJob] = []
        self._running = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        metrics.watch_queue(lambda: len(self._pending), lambda: self._running)

    def start(self) -> list[ServedModel]:
        """Load one instance of every model per worker (in this thread), then start the workers."""
        instances: list[dict[str, ImageModel]] = []
        served: list[ServedModel] = []
        for index in range(self._worker_count):
            models: dict[str, ImageModel] = {}
            for spec in self._specs:
                model = load_model(spec, device=self._device)
                if model.fingerprint in models:
                    raise ForwardguardError(f"models {models[model.fingerprint].spec!r} and {spec!r} have the same weights")
                models[model.fingerprint] = model
                if index == 0:
                    edit_multiple = model.edit_multiple if isinstance(model, DiffusionModel) else None
                    served.append(ServedModel(spec, model.fingerprint, model.encode_multiple, edit_multiple))
                    logger.info("loaded model %s (fingerprint %s)", spec, model.fingerprint[:12])
            instances.append(models)
        for index, models in enumerate(instances):
            thread = threading.Thread(target=self._work, args=(models,), name=f"forwardguard-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return served

    @property
    def alive(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, job: ImmunizeJob) -> None:
        """Queue a job; QueueFull when ``queue_size`` jobs are already waiting."""
        with self._cond:
            if self._closed:
                raise QueueFull("the service is shutting down")
            if len(self._pending) >= self._queue_size:
                raise QueueFull(f"{len(self._pending)} immunizations are already waiting")
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job: ImmunizeJob) -> bool:
        """Cancel a job that is not being recorded; True when nothing will be recorded for it."""
        with self._cond:
            if not job.cancel():
                return False
            if job in self._pending:
                self._pending.remove(job)
            return True

    def close(self, timeout_s: float) -> None:
        """Let the workers finish every queued job, then stop them."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    # -- the worker threads ---------------------------------------------------------------------

    def _take(self) -> list[ImmunizeJob] | None:
        """The oldest waiting job and the waiting jobs alike to it; None once closed and drained."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            first = self._pending.pop(0)
            batch = [first]
            for job in list(self._pending):
                if len(batch) == self._max_batch:
                    break
                if job.key == first.key:
                    batch.append(job)
                    self._pending.remove(job)
            self._running += len(batch)
            return batch

    def _work(self, models: dict[str, ImageModel]) -> None:
        while (batch := self._take()) is not None:
            try:
                self._run(models, batch)
            finally:
                with self._cond:
                    self._running -= len(batch)

    def _run(self, models: dict[str, ImageModel], batch: list[ImmunizeJob]) -> None:
        jobs = [job for job in batch if job.start()]
        if not jobs:
            return
        key = jobs[0].key
        model = models[key.model]
        self._metrics.batch_size.observe(len(jobs))

        def abandon_when_all_cancelled() -> None:
            if all(job.cancelled for job in jobs):
                raise _Abandoned

        try:
            with interruptible(abandon_when_all_cancelled):
                results = immunize(
                    [job.image for job in jobs],
                    model,
                    key.settings,
                    masks=[job.mask for job in jobs] if key.masked else None,
                )
        except Exception as error:  # every job of the batch is answered with it
            if not isinstance(error, (_Abandoned, ForwardguardError)):
                logger.exception("immunizing a batch of %d failed", len(jobs))
            for job in jobs:
                job.resolve(error=error)
            return
        for job, result in zip(jobs, results):
            if not job.commit():
                continue  # its request timed out: nothing is recorded
            try:
                job.resolve(result=self._record(job, result, model))
            except Exception as error:  # the job's request is answered with it
                if not isinstance(error, NotRecorded):
                    logger.exception("recording an immunized image failed")
                job.resolve(error=error)

    def _record(self, job: ImmunizeJob, result: ImmunizedImage, model: ImageModel) -> Immunized:
        png = encode_png(result.rgb, result.alpha, icc_profile=job.image.icc_profile)
        try:
            record = record_immunized(
                self._registry,
                result,
                png=png,
                settings=job.key.settings,
                target="gray",
                model_fingerprint=model.fingerprint,
                model_spec=model.spec,
                source=job.source,
                mask=job.mask_name,
                tenant=job.tenant,
            )
        except ForwardguardError as error:
            logger.error("the registry did not record a pattern: %s", error)
            raise NotRecorded(str(error)) from None
        self._metrics.patterns_recorded.labels(job.key.settings.method).inc()
        return Immunized(png=png, record=record)
