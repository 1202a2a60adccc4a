"""A worker's RabbitMQ consumer: forecasts queue messages and answers them at ``reply_to``.

Started per worker on the server's event loop once the model is loaded, only when ``amqp_url``
is set. Each message body is an HTTP request body (:mod:`.messages`); it runs through
:meth:`ForecastRunner.run` at ``amqp_priority`` and the reply (the HTTP response JSON, or the
HTTP error body, with the status in the ``status`` header) goes to the message's ``reply_to``
with its ``correlation_id``. The message is acknowledged only after the broker confirmed the
reply, so a worker killed mid-forecast leaves it to be redelivered.

Bad input is answered (400) and acknowledged. Any other failure is retried: the message is
published again with ``x-kronos-attempts`` + 1 and acknowledged, until ``amqp_max_retries``
retries are spent; then it is answered with its error and moved to ``<queue>.dlq``. A message
that kills its worker every time is bounded by the quorum queue's ``x-delivery-limit`` (the broker
dead-letters it to the same queue). After a broker restart the consumer reconnects with
exponential backoff. A message with a ``job_id`` header (or every message with
``amqp_record_jobs``) is also recorded as a job in the store (:mod:`.jobs`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed

from kronos_runtime.engine import Priority

from ..accounting import record_request
from ..forecasting import ForecastRunner, RequestFailed, input_summary
from ..metrics import METRICS
from ..settings import Settings
from ..schemas import SingleRequest
from .jobs import MAX_JOB_ID, QueueJob
from .messages import InvalidMessage, parse_body

log = logging.getLogger("kronos.queue")

ATTEMPTS_HEADER = "x-kronos-attempts"
MAX_BACKOFF_S = 30.0
AVERAGE_WEIGHT = 0.1  # weight of the newest message in the moving average of inference time


class JobRecorder(Protocol):
    """Where messages are recorded as jobs (the store: :class:`.jobs.StoreJobRecorder`)."""

    async def begin(self, job_id: str | None, dedupe_key: str | None,
                    bodies: list[SingleRequest], batch: bool) -> QueueJob: ...

    async def release(self, job: QueueJob, status: int, body: dict[str, Any]) -> None: ...

    async def finish(self, job: QueueJob, status: int, body: dict[str, Any]) -> None: ...


@dataclass
class Outcome:
    """What a message's forecast came to: the reply's status and body, and whether to retry."""

    status: int
    body: dict[str, Any]
    retry: bool = False

    @property
    def model_version(self) -> str:
        results = self.body.get("results", [self.body]) if self.status == 200 else []
        return ",".join(sorted({r["model_version"] for r in results})) or "none"


def attempts(message: AbstractIncomingMessage) -> int:
    """Earlier attempts at this message: failures we republished plus broker redeliveries."""
    headers = message.headers or {}
    return int(headers.get(ATTEMPTS_HEADER) or 0) + int(headers.get("x-delivery-count") or 0)


def request_id_of(message: AbstractIncomingMessage) -> str:
    headers = message.headers or {}
    return str(headers.get("x-request-id") or message.correlation_id or message.message_id
               or uuid.uuid4().hex)


class QueueConsumer:
    """Consumes ``amqp_queue`` on the running event loop; reconnects until stopped."""

    def __init__(self, settings: Settings, runner: ForecastRunner,
                 recorder: JobRecorder | None = None,
                 paused: Callable[[], bool] = lambda: False) -> None:
        self.settings, self.runner, self.recorder = settings, runner, recorder
        self.paused = paused  # e.g. draining: take no new messages, finish the ones in flight
        self.queue = settings.amqp_queue
        self.dead_letter_queue = f"{settings.amqp_queue}.dlq"
        self.priority = Priority.parse(settings.amqp_priority)
        self.state = "waiting_for_model" if self.enabled else "disabled"
        self.error: str | None = None
        self.connections = 0
        self.average_inference_s: float | None = None
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._handlers: set[asyncio.Task] = set()
        self._connection: AbstractConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._publisher_lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.amqp_url)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start consuming in the background (from the worker's start-up hook); no-op when off."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kronos-queue")

    async def stop(self) -> None:
        """Stop taking messages, let in-flight ones finish (up to ``timeout_s``), disconnect.
        Messages not acknowledged by then go back to the queue."""
        if self._task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(self._task, self.settings.timeout_s + 10)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        """What ``/v1/readyz`` shows (never the URL: it holds the password)."""
        return {"enabled": self.enabled, "state": self.state, "queue": self.queue,
                "dead_letter_queue": self.dead_letter_queue, "prefetch": self.settings.amqp_prefetch,
                "priority": self.priority.name.lower(), "in_flight": len(self._handlers),
                "connections": self.connections, "error": self.error,
                "average_inference_s": self.average_inference_s}

    def blocks_readiness(self) -> bool:
        """Readiness depends on the broker only when ``amqp_required_for_ready``."""
        return self.enabled and self.settings.amqp_required_for_ready and self.state != "consuming"

    async def _run(self) -> None:
        if not await self._model_loaded():
            self.state = "model_failed" if self.runner.load_error else "stopped"
            self.error = self.runner.load_error
            return
        backoff = 1.0
        while not self._stop.is_set():
            self.state = "connecting"
            consumed = False
            try:
                consumed = await self._session()
            except Exception as exc:  # broker down or refusing: retry with backoff
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("queue connection failed", extra={
                    "event": "queue_connection_failed", "queue": self.queue, "error": self.error,
                    "retry_in_s": backoff})
            if self._stop.is_set() or self.paused():
                break
            backoff = 1.0 if consumed else backoff
            self.state = "reconnecting"
            try:
                await asyncio.wait_for(self._stop.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _model_loaded(self) -> bool:
        while not self.runner.variants:
            if self.runner.load_error or self._stop.is_set() or self.paused():
                return False
            await asyncio.sleep(0.2)
        return True

    # -- one connection ----------------------------------------------------------------------
    async def _session(self) -> bool:
        """Consume until the connection or channel closes or we stop; True once it consumed."""
        connection = await aio_pika.connect(
            self.settings.amqp_url, timeout=15,
            client_properties={"connection_name": f"kronos-worker-{os.getpid()}"})
        self._connection, self._publisher = connection, None
        closed = asyncio.Event()
        connection.close_callbacks.add(lambda *_: closed.set())
        try:
            channel, queue = await self.declare(connection)
            channel.close_callbacks.add(lambda *_: closed.set())
            tag = await queue.consume(self._on_message)
            self.connections += 1
            self.state, self.error = "consuming", None
            log.info("consuming", extra={"event": "queue_consuming", "queue": self.queue,
                                         "prefetch": self.settings.amqp_prefetch})
            METRICS.queue_consumers.labels(queue=self.queue).inc()
            try:
                await self._until_stopped_or_lost(closed)
            finally:
                METRICS.queue_consumers.labels(queue=self.queue).dec()
            if closed.is_set():
                self.error = "connection to the broker lost"
                log.warning("queue connection lost", extra={"event": "queue_connection_lost",
                                                            "queue": self.queue})
            else:
                await queue.cancel(tag)
                await self._finish_in_flight()
            return True
        finally:
            self._connection = None
            await connection.close()

    async def _until_stopped_or_lost(self, closed: asyncio.Event) -> None:
        """Wait for :meth:`stop`, a lost connection, or :attr:`paused` (draining)."""
        while not (self._stop.is_set() or closed.is_set() or self.paused()):
            await asyncio.sleep(0.5)
        if self.paused() and not closed.is_set():
            self.state = "draining"
            log.info("draining: no new messages", extra={"event": "queue_draining",
                                                         "queue": self.queue})

    async def declare(self, connection: AbstractConnection) -> tuple[AbstractChannel, AbstractQueue]:
        """The consuming channel and the queue: a quorum queue dead-lettering to ``<queue>.dlq``
        after ``amqp_max_retries`` redeliveries, or, if the queue exists with other arguments
        (declared by someone else), that queue as it is."""
        channel = await connection.channel(publisher_confirms=False)
        await channel.declare_queue(self.dead_letter_queue, durable=True)
        arguments = {"x-queue-type": "quorum", "x-delivery-limit": self.settings.amqp_max_retries,
                     "x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.dead_letter_queue}
        try:
            await channel.set_qos(prefetch_count=self.settings.amqp_prefetch)
            return channel, await channel.declare_queue(self.queue, durable=True, arguments=arguments)
        except ChannelPreconditionFailed as exc:
            log.warning("queue exists with other arguments: consuming it as it is", extra={
                "event": "queue_arguments_differ", "queue": self.queue, "error": str(exc)})
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self.settings.amqp_prefetch)
        return channel, await channel.declare_queue(self.queue, passive=True)

    async def _finish_in_flight(self) -> None:
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=self.settings.timeout_s)

    async def _publish(self, message: aio_pika.Message, routing_key: str) -> None:
        """Publish on the confirming channel (reopened if the broker closed it); returns once
        the broker confirmed."""
        async with self._publisher_lock:
            if self._publisher is None or self._publisher.is_closed:
                if self._connection is None or self._connection.is_closed:
                    raise ConnectionError("not connected to the broker")
                self._publisher = await self._connection.channel(publisher_confirms=True)
            channel = self._publisher
        await channel.default_exchange.publish(message, routing_key=routing_key, mandatory=False,
                                               timeout=30)

    # -- one message -------------------------------------------------------------------------
    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            await self._handle(message)
        except Exception as exc:  # ack/nack impossible (connection lost): the broker redelivers
            log.warning("message left to the broker", extra={
                "event": "queue_message_unsettled", "queue": self.queue,
                "error": f"{type(exc).__name__}: {exc}"})
        finally:
            self._handlers.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        METRICS.queue_consumed.labels(queue=self.queue).inc()
        if message.redelivered:
            METRICS.queue_redelivered.labels(queue=self.queue).inc()
        request_id = request_id_of(message)
        started = time.perf_counter()
        bodies: list[SingleRequest] = []
        job: QueueJob | None = None
        try:
            bodies, batch = parse_body(message.body)
            job = await self._begin_job(message, bodies, batch, request_id)
            outcome = (Outcome(200, job.result) if job and job.result is not None
                       else await self._forecast(bodies, batch, request_id))
        except InvalidMessage as exc:
            outcome = Outcome(400, exc.body(request_id))
        record_request(f"amqp:{self.queue}", request_id, outcome.status,
                       time.perf_counter() - started, outcome.model_version,
                       device=self.settings.device, error=outcome.body.get("error"),
                       input=input_summary(bodies), correlation_id=message.correlation_id,
                       redelivered=message.redelivered, job_id=job and job.id)
        if not outcome.retry:
            try:
                await self._reply(message, outcome, request_id, job)
            except Exception as exc:  # e.g. the reply is larger than the broker accepts
                outcome = Outcome(500, {"error": f"reply failed: {type(exc).__name__}: {exc}",
                                        "request_id": request_id}, retry=True)
        if outcome.retry:
            await self._retry_or_dead_letter(message, outcome, request_id, job)
            return
        await self._finish_job(job, outcome)
        await message.ack()

    async def _forecast(self, bodies: list[SingleRequest], batch: bool, request_id: str) -> Outcome:
        started = time.perf_counter()
        try:
            results = await asyncio.wait_for(
                self.runner.run(bodies, request_id, index_errors=batch, priority=self.priority,
                                route=f"amqp:{self.queue}"),
                self.settings.timeout_s)
        except TimeoutError:
            return Outcome(504, RequestFailed(504, f"timed out after {self.settings.timeout_s} s")
                           .body(request_id), retry=True)
        except RequestFailed as exc:
            return Outcome(exc.status, exc.body(request_id), retry=exc.status >= 500)
        except Exception as exc:  # the runtime failed on this message: retried, worker lives on
            log.exception("forecast failed", extra={"event": "forecast_failed", "queue": self.queue,
                                                    "request_id": request_id,
                                                    "input": input_summary(bodies)})
            return Outcome(500, {"error": f"forecast failed: {type(exc).__name__}: {exc}",
                                 "request_id": request_id}, retry=True)
        self._observe(time.perf_counter() - started)
        return Outcome(200, {"results": results} if batch else results[0])

    def _observe(self, seconds: float) -> None:
        previous = self.average_inference_s
        self.average_inference_s = seconds if previous is None else (
            previous + AVERAGE_WEIGHT * (seconds - previous))
        METRICS.average_inference.labels(queue=self.queue).set(self.average_inference_s)

    async def _reply(self, message: AbstractIncomingMessage, outcome: Outcome, request_id: str,
                     job: QueueJob | None) -> None:
        """Publish the reply to ``reply_to`` (if any) and wait for the broker's confirm."""
        if not message.reply_to:
            return
        headers: dict[str, Any] = {"status": outcome.status, "request_id": request_id,
                                   "worker": os.getpid()}
        if job is not None:
            headers["job_id"] = job.id
        reply = aio_pika.Message(json.dumps(outcome.body).encode(), content_type="application/json",
                                 correlation_id=message.correlation_id, headers=headers,
                                 delivery_mode=message.delivery_mode)
        await self._publish(reply, message.reply_to)
        METRICS.queue_replied.labels(queue=self.queue, status=str(outcome.status)).inc()

    async def _retry_or_dead_letter(self, message: AbstractIncomingMessage, outcome: Outcome,
                                    request_id: str, job: QueueJob | None) -> None:
        """Publish the message again with one more attempt, or, its retries spent, answer it with
        its error and move it to the dead-letter queue; then acknowledge it."""
        done = attempts(message)
        headers = {**(message.headers or {}), ATTEMPTS_HEADER: done + 1,
                   "x-kronos-error": str(outcome.body.get("error"))[:500]}
        headers.pop("x-delivery-count", None)
        last = done >= self.settings.amqp_max_retries
        copy = aio_pika.Message(message.body, headers=headers, content_type=message.content_type,
                                correlation_id=message.correlation_id, reply_to=message.reply_to,
                                message_id=message.message_id, delivery_mode=message.delivery_mode)
        if last:
            try:
                await self._reply(message, Outcome(outcome.status, outcome.body), request_id, job)
            except Exception as exc:
                log.warning("error reply failed", extra={"event": "queue_reply_failed",
                                                         "request_id": request_id, "error": str(exc)})
            await self._publish(copy, self.dead_letter_queue)
            METRICS.queue_dead_lettered.labels(queue=self.queue).inc()
            await self._finish_job(job, outcome)
        else:
            await asyncio.sleep(min(2.0 ** done, 10.0) * 0.5)
            await self._finish_job(job, outcome, retried=True)
            await self._publish(copy, self.queue)
            METRICS.queue_retried.labels(queue=self.queue).inc()
        log.warning("message dead-lettered" if last else "message retried", extra={
            "event": "queue_dead_lettered" if last else "queue_retried", "queue": self.queue,
            "request_id": request_id, "attempt": done + 1, "error": outcome.body.get("error")})
        await message.ack()

    # -- job recording (the store) -----------------------------------------------------------
    async def _begin_job(self, message: AbstractIncomingMessage, bodies: list[SingleRequest],
                         batch: bool, request_id: str) -> QueueJob | None:
        """The message's job when it has a ``job_id`` header or ``amqp_record_jobs`` is on."""
        job_id = (message.headers or {}).get("job_id")
        if job_id is not None and not 0 < len(str(job_id)) <= MAX_JOB_ID:
            raise InvalidMessage(f"headers.job_id: must be 1 to {MAX_JOB_ID} characters",
                                 "headers.job_id")
        if self.recorder is None or (job_id is None and not self.settings.amqp_record_jobs):
            return None
        job_id = str(job_id) if job_id is not None else None
        try:
            return await self.recorder.begin(job_id, job_id or message.message_id
                                             or message.correlation_id, bodies, batch)
        except Exception as exc:  # the store is down: the message is still answered
            log.warning("job not recorded", extra={"event": "queue_job_record_failed",
                                                   "request_id": request_id, "error": str(exc)})
            return None

    async def _finish_job(self, job: QueueJob | None, outcome: Outcome,
                          retried: bool = False) -> None:
        """Store the outcome of a recorded message (or, ``retried``, hand its job back)."""
        if self.recorder is None or job is None:
            return
        try:
            if retried:
                await self.recorder.release(job, outcome.status, outcome.body)
            else:
                await self.recorder.finish(job, outcome.status, outcome.body)
        except Exception as exc:
            log.warning("job result not recorded", extra={"event": "queue_job_record_failed",
                                                          "job_id": job.id, "error": str(exc)})
