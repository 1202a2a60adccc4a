"""Queue workers against a real RabbitMQ (Debian's rabbitmq-server) and a real two-worker server."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import aio_pika
import httpx
import numpy as np
import pytest

from conftest import make_candles
from local_rabbitmq import installed, running_rabbitmq
from local_server import import_dev_model, running_server

QUEUE = "kronos.test"
MAX_RETRIES = 2
MAX_MESSAGE_BYTES = 131072  # the test broker's limit: a reply above it is a poison message


def test_amqp_settings_are_checked():
    from kronos_serving.settings import load_settings

    settings = load_settings({"KRONOS_AMQP_URL": "amqp://u:p@h/", "KRONOS_AMQP_PRIORITY": "Interactive"})
    assert (settings.amqp_url, settings.amqp_queue, settings.amqp_priority) == (
        "amqp://u:p@h/", "kronos.forecast", "Interactive")
    for name, value in (("PRIORITY", "urgent"), ("PREFETCH", "0"), ("MAX_RETRIES", "-1")):
        with pytest.raises(ValueError, match="priority|prefetch"):
            load_settings({f"KRONOS_AMQP_{name}": value})


def test_message_bodies_parse_like_the_http_routes():
    from kronos_serving.queue.messages import InvalidMessage, parse_body

    rows = [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7]]
    bodies, batch = parse_body(json.dumps({"batch": [{"data": rows}, {"data": rows, "model_version": "b"}],
                                           "model_version": "a"}).encode())
    assert batch and [b.model_version for b in bodies] == ["a", "b"]  # items may pin their own
    bodies, batch = parse_body(json.dumps({"data": rows, "pred_len": 3}).encode())
    assert not batch and bodies[0].pred_len == 3
    with pytest.raises(InvalidMessage) as bad:
        parse_body(json.dumps({"batch": [{"data": rows}, {"data": [rows[0], [1.0, 2.0]]}]}).encode())
    assert bad.value.field == "batch[1].data[1]" and bad.value.body("r")["detail"]
    with pytest.raises(InvalidMessage) as bad:
        parse_body(b"\xff")
    assert bad.value.status == 400 and bad.value.field == "body"


def test_readiness_waits_for_the_broker_only_when_required():
    from kronos_serving.forecasting import ForecastRunner
    from kronos_serving.queue import QueueConsumer
    from kronos_serving.settings import load_settings

    def consumer(**env: str) -> QueueConsumer:
        settings = load_settings({f"KRONOS_{k.upper()}": v for k, v in env.items()})
        return QueueConsumer(settings, ForecastRunner(settings))

    assert consumer().status()["state"] == "disabled" and not consumer().blocks_readiness()
    assert not consumer(amqp_url="amqp://h/").blocks_readiness()
    required = consumer(amqp_url="amqp://h/", amqp_required_for_ready="true")
    assert required.blocks_readiness()  # not consuming yet
    required.state = "consuming"
    assert not required.blocks_readiness()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    assert installed(), "rabbitmq-server is installed by `make install` (Debian package)"
    with running_rabbitmq(tmp_path_factory.mktemp("rabbitmq"),
                          f"max_message_size = {MAX_MESSAGE_BYTES}\n") as node:
        yield node


@pytest.fixture(scope="module")
def server(broker, tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-home")
    tag = import_dev_model(home, "kronos-queue", seed=4)
    env = {"KRONOS_MODEL": tag, "KRONOS_WORKERS": "2", "KRONOS_AMQP_URL": broker.url,
           "KRONOS_AMQP_QUEUE": QUEUE, "KRONOS_AMQP_PREFETCH": "8",
           "KRONOS_AMQP_MAX_RETRIES": str(MAX_RETRIES), "KRONOS_MAX_PRED_LEN": "200",
           "KRONOS_DRAIN_DELAY_S": "2"}
    with running_server(home, env, tmp_path_factory.mktemp("logs") / "server.log") as srv:
        asyncio.run(wait_for_consumers(broker.url, 2))
        yield srv


async def queue_counts(url: str, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = (await channel.declare_queue(name, passive=True)).declaration_result
        return declared.message_count, declared.consumer_count


async def wait_for_consumers(url: str, count: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while (await queue_counts(url, QUEUE))[1] < count:
        assert time.time() < deadline, f"fewer than {count} consumers on {QUEUE}"
        await asyncio.sleep(0.3)


class RpcClient:
    """Publishes requests (persistent, with reply_to and correlation_id) and collects replies
    from a durable reply queue, across reconnects."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.reply_queue = f"test.replies.{uuid.uuid4().hex[:8]}"
        self.replies: dict[str, list[aio_pika.abc.AbstractIncomingMessage]] = {}

    async def publish(self, bodies: list, headers: list[dict] | None = None) -> list[str]:
        ids = [uuid.uuid4().hex for _ in bodies]
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(self.reply_queue, durable=True)
            for i, (body, cid) in enumerate(zip(bodies, ids)):
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                await channel.default_exchange.publish(aio_pika.Message(
                    raw, correlation_id=cid, reply_to=self.reply_queue, content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers=(headers[i] if headers else None) or {"x-request-id": f"req-{cid}"}),
                    routing_key=QUEUE)
        return ids

    async def collect(self, ids: list[str], timeout: float = 120, at_least: int | None = None) -> None:
        """Read replies until every id (or ``at_least`` of them) is answered."""
        wanted, deadline = set(ids), time.time() + timeout
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.reply_queue, durable=True)
            while time.time() < deadline:
                message = await queue.get(fail=False)
                if message is None:
                    done = len(wanted & set(self.replies))
                    if done >= (len(wanted) if at_least is None else at_least):
                        return
                    await asyncio.sleep(0.1)
                    continue
                await message.ack()
                self.replies.setdefault(message.correlation_id, []).append(message)
        missing = wanted - set(self.replies)
        if at_least is None and missing:
            raise AssertionError(f"{len(missing)} of {len(wanted)} requests not answered")

    def reply(self, cid: str) -> tuple[int, dict]:
        message = self.replies[cid][0]
        return message.headers["status"], json.loads(message.body)


def body_for(i: int) -> dict:
    frame, stamps = make_candles(24 + i % 17, seed=i)
    return {"data": frame.to_numpy().tolist(), "timestamps": [t.isoformat() for t in stamps],
            "pred_len": 2 + i % 3, "sample_count": 1 + i % 2, "seed": 1000 + i}


def numbers_apart(reply: dict, http: dict) -> tuple[dict, list, list]:
    """(everything but the forecast values, queue values, HTTP values) of two response bodies."""
    def split(body: dict) -> tuple[dict, list]:
        results = body.get("results", [body])
        values = [[p[c] for c in ("open", "high", "low", "close", "volume", "amount")]
                  for r in results for paths in [r["predictions"], *r.get("quantiles", {}).values()]
                  for p in paths]
        shape = [{**r, "predictions": [p["timestamp"] for p in r["predictions"]],
                  "quantiles": sorted(r.get("quantiles", {}))} for r in results]
        return {"results": shape}, values

    (reply_shape, reply_values), (http_shape, http_values) = split(reply), split(http)
    assert reply_shape == http_shape
    return reply_shape, reply_values, http_values


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/v1/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M))


def test_200_messages_answered_like_http_by_both_workers(server, broker):
    bodies = [body_for(i) if i % 10 else {"batch": [body_for(i), body_for(i + 1)]} for i in range(200)]
    client = RpcClient(broker.url)
    ids = asyncio.run(client.publish(bodies))
    asyncio.run(client.collect(ids))
    assert set(client.replies) == set(ids)

    def over_http(cid: str, body: dict) -> httpx.Response:
        route = "/v1/predict/batch" if "batch" in body else "/v1/predict/single"
        return httpx.post(server.url + route, json=body, headers={"X-Request-ID": f"req-{cid}"},
                          timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(over_http, ids, bodies))
    workers = set()
    for cid, http in zip(ids, responses):
        status, reply = client.reply(cid)
        workers.add(client.replies[cid][0].headers["worker"])
        assert status == http.status_code == 200
        # equal up to float rounding: HTTP requests batch with other series than the messages did
        _, from_queue, from_http = numbers_apart(reply, http.json())
        np.testing.assert_allclose(from_queue, from_http, rtol=1e-4)
    assert len(workers) == 2, "two workers share one queue"
    ready = httpx.get(server.url + "/v1/readyz").json()
    assert ready["queue"]["state"] == "consuming" and ready["queue"]["queue"] == QUEUE
    assert metric(server, "kronos_queue_consumers") == 2
    assert metric(server, "kronos_queue_replies_total") >= 200
    assert metric(server, "kronos_queue_messages_consumed_total") >= 200
    assert metric(server, "kronos_average_inference_seconds") > 0


def test_invalid_messages_answered_400_and_acked(server, broker):
    frame, _ = make_candles(8, seed=1)
    rows = frame.to_numpy().tolist()
    inverted = [list(r) for r in rows]
    inverted[2][1], inverted[2][2] = inverted[2][2] - 1, inverted[2][1] + 1  # high < low
    invalid = [b"{not json", {"data": [rows[0][:3], rows[1]]}, {"data": inverted},
               {"batch": [{"data": rows}, {"data": rows, "pred_len": 0}]},
               {"batch": [{"data": rows}], "model_version": "no-such-version"}, [1, 2]]
    client = RpcClient(broker.url)
    ids = asyncio.run(client.publish(invalid))
    asyncio.run(client.collect(ids, timeout=60))
    fields = []
    for cid, body in zip(ids, invalid):
        status, reply = client.reply(cid)
        assert status == 400 and reply["error"].startswith(f"{reply['field']}:"), reply
        fields.append(reply["field"])
    assert fields == ["body", "data[0]", "data", "batch[1].pred_len", "batch[0].model_version", "body"]
    http = httpx.post(server.url + "/v1/predict/single", json=invalid[1],
                      headers={"X-Request-ID": f"req-{ids[1]}"}).json()
    assert client.reply(ids[1])[1] == http  # the same body HTTP answers, pydantic detail included
    assert asyncio.run(queue_counts(broker.url, QUEUE))[0] == 0
    assert asyncio.run(queue_counts(broker.url, QUEUE + ".dlq"))[0] == 0


def test_poison_message_retried_then_dead_lettered(server, broker):
    frame, _ = make_candles(30, seed=2)
    # A valid request whose reply (120 steps x 10 paths) exceeds the broker's message size limit:
    # publishing the reply fails every time.
    poison = {"data": frame.to_numpy().tolist(), "pred_len": 120, "sample_count": 2,
              "quantiles": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "seed": 1}
    retried, dead = (metric(server, f"kronos_queue_messages_{n}_total") for n in ("retried",
                                                                                  "dead_lettered"))
    client = RpcClient(broker.url)
    job_id = f"poison-{uuid.uuid4().hex[:8]}"
    ids = asyncio.run(client.publish([poison, body_for(7)], headers=[{"job_id": job_id}, {}]))
    asyncio.run(client.collect(ids, timeout=90))
    status, reply = client.reply(ids[0])
    assert status == 500 and reply["error"].startswith("reply failed"), reply
    assert client.reply(ids[1])[0] == 200  # the workers lived on

    async def dead_lettered() -> aio_pika.abc.AbstractIncomingMessage:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            queue = await (await connection.channel()).declare_queue(QUEUE + ".dlq", durable=True)
            message = await queue.get(fail=False)
            await message.ack()
            return message

    message = asyncio.run(dead_lettered())
    assert message.correlation_id == ids[0] and json.loads(message.body) == poison
    assert message.headers["x-kronos-attempts"] == MAX_RETRIES + 1
    assert metric(server, "kronos_queue_messages_retried_total") - retried == MAX_RETRIES
    assert metric(server, "kronos_queue_messages_dead_lettered_total") - dead == 1
    # Its job is never left running: failed with the error, or run by a job runner (whose
    # result, unlike the reply, needs no broker) after a retry handed it back.
    deadline = time.time() + 30
    while (job := httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json())["status"] not in (
            "failed", "succeeded"):
        assert time.time() < deadline, job
        time.sleep(0.3)
    assert job["status"] == "succeeded" or job["error"]["error"].startswith("reply failed")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_worker_stopped_mid_flight_loses_nothing(server, broker, how):
    redelivered = metric(server, "kronos_queue_messages_redelivered_total")
    client = RpcClient(broker.url)
    ids = asyncio.run(client.publish([{**body_for(i), "pred_len": 40} for i in range(60)]))
    asyncio.run(client.collect(ids, at_least=1))
    victim = next(iter(client.replies.values()))[0].headers["worker"]
    os.kill(victim, how)  # it holds up to 8 unacknowledged messages
    asyncio.run(client.collect(ids, timeout=150))
    assert set(client.replies) == set(ids)
    assert all(client.reply(cid)[0] == 200 for cid in ids)
    redelivered = metric(server, "kronos_queue_messages_redelivered_total") - redelivered
    if how == signal.SIGKILL:  # its messages went back to the queue and were answered by others
        assert redelivered > 0
    else:  # draining: no new messages taken, those held finished and acknowledged (on a loaded
        # machine the shutdown grace can cut the last one short: it is redelivered, not lost)
        assert redelivered <= 1 and '"event": "queue_draining"' in server.log()
    asyncio.run(wait_for_consumers(broker.url, 2))  # the worker was replaced and consumes


def test_broker_restart_mid_run(server, broker):
    client = RpcClient(broker.url)
    ids = asyncio.run(client.publish([{**body_for(i), "pred_len": 30} for i in range(40)]))
    asyncio.run(client.collect(ids, at_least=3))
    broker.stop()
    deadline = time.time() + 30
    while (ready := httpx.get(server.url + "/v1/readyz", timeout=10)).json()["queue"]["state"] == "consuming":
        assert time.time() < deadline, "the consumer did not notice the broker going away"
        time.sleep(0.2)
    assert ready.status_code == 200  # readiness does not depend on the broker unless configured
    assert ready.json()["queue"]["state"] in ("connecting", "reconnecting")
    broker.start()
    asyncio.run(client.collect(ids, timeout=150))
    assert set(client.replies) == set(ids)
    assert all(client.reply(cid)[0] == 200 for cid in ids)
    asyncio.run(wait_for_consumers(broker.url, 2))
    queue = httpx.get(server.url + "/v1/readyz").json()["queue"]
    assert queue["state"] == "consuming" and queue["connections"] >= 2


def test_readme_publishing_example(server, broker):
    from test_readme import blocks

    code = blocks("python", "aio_pika")[0].replace("amqp://guest:guest@localhost:5672/", broker.url)
    code = code.replace('"kronos.forecast"', f'"{QUEUE}"')
    scope: dict = {}
    exec(compile(code, "README", "exec"), scope)
    status, reply = scope["reply"]
    assert status == 200 and len(reply["predictions"]) == 2


def test_message_with_job_id_is_recorded_as_a_job(server, broker):
    client = RpcClient(broker.url)
    job_id = f"queue-{uuid.uuid4().hex[:12]}"
    bodies = [{"batch": [body_for(3), body_for(4)]}, body_for(5), body_for(6)]
    ids = asyncio.run(client.publish(bodies, headers=[{"job_id": job_id}, {"x-request-id": "plain"},
                                                      {"job_id": "x" * 65}]))
    asyncio.run(client.collect(ids, timeout=60))
    status, reply = client.reply(ids[0])
    assert status == 200 and client.replies[ids[0]][0].headers["job_id"] == job_id
    job = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "succeeded" and job["result"] == reply  # pollable over HTTP
    assert "job_id" not in client.replies[ids[1]][0].headers  # amqp_record_jobs is off
    assert client.reply(ids[2]) == (400, {"error": "headers.job_id: must be 1 to 64 characters",
                                          "field": "headers.job_id", "request_id": ids[2]})  # correlation id


def test_declared_queue_dead_letters_a_message_that_keeps_coming_back(broker):
    """A message whose worker dies every time: the quorum queue's delivery limit moves it to the
    dead-letter queue. An existing queue declared otherwise is consumed as it is."""
    from kronos_serving.forecasting import ForecastRunner
    from kronos_serving.queue import QueueConsumer
    from kronos_serving.settings import load_settings

    def consumer(queue: str) -> QueueConsumer:
        settings = load_settings({"KRONOS_AMQP_URL": broker.url, "KRONOS_AMQP_QUEUE": queue,
                                  "KRONOS_AMQP_MAX_RETRIES": "2"})
        return QueueConsumer(settings, ForecastRunner(settings))

    async def scenario() -> tuple[int, int, str]:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            _, queue = await consumer("kronos.crashing").declare(connection)
            channel = await connection.channel()
            await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=queue.name)
            returns = 0
            while (message := await queue.get(fail=False, timeout=5)) is not None:
                await message.nack(requeue=True)  # as if its worker was killed
                returns += 1
            await asyncio.sleep(0.5)
            dead = await (await channel.declare_queue("kronos.crashing.dlq", passive=True)).get(
                fail=False)
            await channel.declare_queue("kronos.classic", durable=True)  # declared by someone else
            _, classic = await consumer("kronos.classic").declare(connection)
            return returns, dead is not None, classic.name

    returns, dead_lettered, classic = asyncio.run(scenario())
    assert returns == 3 and dead_lettered  # delivered 1 + 2 retries, then dead-lettered
    assert classic == "kronos.classic"
