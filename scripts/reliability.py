"""Reliability probes (issue #17) against a real server on 127.0.0.1, with the figures they measure.

Each probe is a function returning a dict of figures; ``tests/test_reliability.py`` runs them
shorter and asserts on them. Run all (a server with the tiny dev model is started for each):

    .venv/bin/python scripts/reliability.py            # full length (a 60 s memory flood ...)
    .venv/bin/python scripts/reliability.py --quick    # shorter
    .venv/bin/python scripts/reliability.py --url http://127.0.0.1:3000 --probe event_loop

``huge_request``: the largest request the cost control admits (``max_request_cost``), then small
requests; none of those may time out (the engine runs them in its short lane).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_server import ROOT, import_dev_model, running_server  # noqa: E402

sys.path.insert(0, str(ROOT))
from kronos_runtime.engine import series_cost  # noqa: E402
from kronos_serving.settings import Settings  # noqa: E402

ROW = [10.0, 10.5, 9.8, 10.2, 1000.0, 10200.0]
QUICK = {"data": [ROW] * 8, "pred_len": 1}


def max_body(items: int = 64, rows: int = 2048, rejected: bool = False) -> bytes:
    """A maximal batch body with the default limits: 64 series of 2048 rows, full-precision
    prices (~15 MB, under the 16 MB cap). ``rejected``: its last item carries an unknown field,
    so the whole body is parsed and validated, then answered 400 (no forecast runs)."""
    series = [{"data": [[r * (1 + i * 1.23456789e-7) for r in ROW] for i in range(rows)],
               "pred_len": 1} for _ in range(items)]
    if rejected:
        series[-1] = {**series[-1], "colour": "red"}
    return json.dumps({"batch": series}).encode()


def worker_pids(server_pid: int) -> list[int]:
    """The server's worker processes (none once it has exited)."""
    pids = []
    try:
        for child in psutil.Process(server_pid).children(recursive=True):
            if "_bentoml_impl.worker" in " ".join(child.cmdline()):
                pids.append(child.pid)
    except psutil.NoSuchProcess:  # exiting while we look
        pass
    return pids


def rss_mb(pids: list[int]) -> float:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2 ** 20


def _latencies(url: str, stop: threading.Event, every_s: float) -> tuple[list[float], int]:
    took, failed = [], 0
    with httpx.Client(timeout=1.0) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = client.get(url + "/v1/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            took.append(time.perf_counter() - started)
            failed += not ok
            time.sleep(every_s)
    return took, failed


def probe_event_loop(url: str, seconds: float = 20, clients: int = 4, body: bytes | None = None,
                     headers: dict | None = None, max_bodies: int = 10 ** 6) -> dict:
    """Health probes every 50 ms while ``clients`` loop maximal bodies (each at most
    ``max_bodies``, to stay under a rate limit): probe latency figures."""
    body = body or (max_body() if clients else b"")
    stop, sent = threading.Event(), []

    def flood() -> None:
        with httpx.Client(timeout=120) as client:
            for _ in range(max_bodies):
                if stop.is_set():
                    break
                response = client.post(url + "/v1/predict/batch", content=body, headers={
                    "Content-Type": "application/json", **(headers or {})})
                sent.append(response.status_code)

    with ThreadPoolExecutor(clients + 1) as pool:  # clients=0: the probes alone (a baseline)
        floods = [pool.submit(flood) for _ in range(clients)]
        probes = pool.submit(_latencies, url, stop, 0.05)
        time.sleep(seconds)
        stop.set()
        took, failed = probes.result()
        for f in floods:
            f.result()
    took.sort()
    return {"probe": "event_loop", "clients": clients, "body_mb": round(len(body) / 2 ** 20, 1), "bodies_sent": len(sent),
            "body_statuses": sorted(set(sent)), "health_probes": len(took), "probes_failed": failed,
            "p50_ms": round(1000 * statistics.median(took), 1),
            "p99_ms": round(1000 * took[int(0.99 * (len(took) - 1))], 1),
            "max_ms": round(1000 * took[-1], 1)}


def probe_memory(url: str, pids: list[int], seconds: float = 60, clients: int = 4,
                 limited_key: str = "") -> dict:
    """Health probes, 401s (no key) and 429s (``limited_key`` over its limit) as fast as
    ``clients`` threads go: worker RSS before and after."""
    kinds = [("GET", "/v1/healthz", {}), ("POST", "/v1/predict/single", {})]
    if limited_key:
        kinds.append(("POST", "/v1/predict/single", {"X-API-Key": limited_key}))
    before, counts, deadline = rss_mb(pids), {}, time.time() + seconds

    def flood(offset: int) -> None:
        with httpx.Client(timeout=5) as client:
            i = offset
            while time.time() < deadline:
                method, path, headers = kinds[i % len(kinds)]
                status = client.request(method, url + path, json=QUICK, headers=headers).status_code
                counts[status] = counts.get(status, 0) + 1
                i += 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(flood, range(clients)))
    time.sleep(1)
    after = rss_mb(pids)
    return {"probe": "memory", "seconds": seconds, "requests": sum(counts.values()),
            "statuses": counts, "rss_before_mb": round(before), "rss_after_mb": round(after),
            "rss_delta_mb": round(after - before, 1)}


def _connect(url: str) -> socket.socket:
    parsed = urlparse(url)
    return socket.create_connection((parsed.hostname, parsed.port), timeout=5)


def _closed_by_server(sock: socket.socket, wait_s: float) -> tuple[bool, bytes]:
    """True (with what it sent) if the server closed the connection within ``wait_s``."""
    sock.settimeout(wait_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
        return True, received
    except (socket.timeout, TimeoutError):
        return False, received
    except ConnectionResetError:
        return True, received


def probe_slow_connections(url: str, count: int = 50, wait_s: float = 15) -> dict:
    """``count`` connections that send nothing, half of them part of a header: how many the server
    closed within ``wait_s``, and whether it kept answering meanwhile."""
    sockets = [_connect(url) for _ in range(count)]
    for sock in sockets[::2]:
        sock.sendall(b"POST /v1/predict/single HTTP/1.1\r\nHost: x\r\n")
    health = httpx.get(url + "/v1/healthz", timeout=5).status_code
    deadline = time.time() + wait_s
    closed = sum(_closed_by_server(s, max(0.1, deadline - time.time()))[0] for s in sockets)
    for sock in sockets:
        sock.close()
    return {"probe": "slow_connections", "connections": count, "closed_by_server": closed,
            "health_meanwhile": health}


def probe_connection_cap(url: str, count: int) -> dict:
    """Open ``count`` idle connections: how many got the 503 refusal at once."""
    sockets = [_connect(url) for _ in range(count)]
    refused = 0
    for sock in sockets:
        closed, sent = _closed_by_server(sock, 0.2)
        refused += closed and sent.startswith(b"HTTP/1.1 503")
    for sock in sockets:
        sock.close()
    time.sleep(0.5)
    health = httpx.get(url + "/v1/healthz", timeout=5).status_code
    return {"probe": "connection_cap", "connections": count, "refused_503": refused,
            "health_after": health}


def probe_rate_limit(url: str, requests: int, key: str = "", forwarded_for: str = "") -> dict:
    """``requests`` requests, each on a new connection (so they spread over the workers)."""
    headers = {**({"X-API-Key": key} if key else {}),
               **({"X-Forwarded-For": forwarded_for} if forwarded_for else {})}
    statuses: dict[int, int] = {}
    for _ in range(requests):
        status = httpx.post(url + "/v1/predict/single", json={"data": []}, headers=headers,
                            timeout=10).status_code
        statuses[status] = statuses.get(status, 0) + 1
    return {"probe": "rate_limit", "requests": requests, "statuses": statuses}


def probe_rolling_restart(server, clients: int = 4, drain_wait_s: float = 30) -> dict:
    """Clients loop requests (keep-alive) like a load balancer would; SIGTERM to the server; each
    client stops once it sees readyz fail (the balancer taking the replica out). Requests lost:
    any that was not answered (connection reset, refused, 5xx)."""
    removed, answered, lost = threading.Event(), [], []

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not removed.is_set():
                try:
                    status = http.post(server.url + "/v1/predict/single", json=QUICK).status_code
                    (answered if status == 200 else lost).append(status)
                except httpx.HTTPError as exc:
                    lost.append(type(exc).__name__)

    def balancer() -> None:
        with httpx.Client(timeout=2) as http:
            while True:
                try:
                    if http.get(server.url + "/v1/readyz").status_code != 200:
                        break
                except httpx.HTTPError:
                    break
                time.sleep(0.5)  # a balancer's check interval
        removed.set()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    os.kill(server.process.pid, signal.SIGTERM)
    watcher = threading.Thread(target=balancer)
    watcher.start()
    watcher.join(drain_wait_s)
    removed.set()
    for thread in threads:
        thread.join(30)
    exit_code = server.process.wait(drain_wait_s)
    return {"probe": "rolling_restart", "answered": len(answered), "requests_lost": len(lost),
            "lost": lost[:10], "exit_code": exit_code}


def probe_worker_kill(server, wait_s: float = 30) -> dict:
    """kill -9 a worker: does the server exit (non-zero) or restart the worker, within ``wait_s``?"""
    before = set(worker_pids(server.process.pid))
    os.kill(min(before), signal.SIGKILL)
    deadline = time.time() + wait_s
    while time.time() < deadline and server.process.poll() is None:
        if set(worker_pids(server.process.pid)) - before:  # a new worker
            return {"probe": "worker_kill", "outcome": "worker restarted", "exit_code": None}
        time.sleep(0.2)
    return {"probe": "worker_kill", "outcome": "server exited" if server.process.poll() is not None
            else "nothing within the wait", "exit_code": server.process.poll()}


def largest_legal_paths(rows: int, pred_len: int, max_context: int = 512) -> int:
    """The most sample paths (up to 32) a ``rows`` x ``pred_len`` exact-mode request may have
    under the default ``max_request_cost``."""
    limit = Settings().max_request_cost
    return max(p for p in range(1, 33) if series_cost(rows, pred_len, p, max_context, True) <= limit)


def probe_huge_request(url: str, timeout_s: float, follow_s: float = 60) -> dict:
    """The largest request the cost control admits (2048 rows, pred_len 512, as many paths as
    ``max_request_cost`` allows), then small requests for ``follow_s``: how many of those time
    out (0: they do not wait behind it)."""
    paths = largest_legal_paths(2048, 512)
    huge = {"data": [[r + i * 1e-4 for r in ROW] for i in range(2048)], "pred_len": 512,
            "sample_count": paths}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, url + "/v1/predict/single", json=huge,
                            timeout=timeout_s + 35)
        time.sleep(1)
        statuses: dict[int, int] = {}
        deadline = time.time() + follow_s
        while time.time() < deadline:
            status = httpx.post(url + "/v1/predict/single", json=QUICK,
                                timeout=timeout_s + 35).status_code
            statuses[status] = statuses.get(status, 0) + 1
        try:
            huge_status: int | str = first.result().status_code
        except httpx.HTTPError as exc:
            huge_status = type(exc).__name__
    return {"probe": "huge_request", "huge_paths": paths, "huge_status": huge_status, "later_statuses": statuses,
            "later_timed_out": statuses.get(504, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="probe this 127.0.0.1 server instead of starting servers "
                        "(only the probes that need no process control)")
    parser.add_argument("--quick", action="store_true", help="shorter probes")
    parser.add_argument("--probe", action="append", help="run only these probes")
    args = parser.parse_args()
    seconds = 15 if args.quick else 60
    wanted = set(args.probe or ["event_loop", "memory", "slow_connections", "connection_cap",
                                "rate_limit", "rolling_restart", "worker_kill", "huge_request"])
    results = []
    if args.url:
        assert urlparse(args.url).hostname in ("127.0.0.1", "localhost"), "127.0.0.1 only"
        for name in wanted & {"event_loop", "slow_connections"}:
            results.append(globals()[f"probe_{name}"](args.url))
        print(json.dumps(results, indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        tag = import_dev_model(home, "kronos-reliability")
        env = {"KRONOS_MODEL": tag, "KRONOS_WORKERS": "2", "KRONOS_API_KEYS": "key-a,key-b",
               "KRONOS_RATE_LIMIT_PER_MINUTE": "60", "KRONOS_HEADER_TIMEOUT_S": "5"}
        with running_server(home, env, Path(tmp) / "a.log") as srv:
            keyed = {"X-API-Key": "key-a"}
            if "event_loop" in wanted:
                results.append(probe_event_loop(srv.url, seconds / 3, headers=keyed))
            if "rate_limit" in wanted:
                results.append(probe_rate_limit(srv.url, 120, key="key-b"))
            if "slow_connections" in wanted:
                results.append(probe_slow_connections(srv.url, 200, 10))
            if "memory" in wanted:
                results.append(probe_memory(srv.url, worker_pids(srv.process.pid), seconds,
                                            limited_key="key-b"))
        if "connection_cap" in wanted:
            with running_server(home, {"KRONOS_MODEL": tag, "KRONOS_MAX_CONNECTIONS": "50"},
                                Path(tmp) / "b.log") as srv:
                results.append(probe_connection_cap(srv.url, 80))
        if "rolling_restart" in wanted:
            with running_server(home, {"KRONOS_MODEL": tag, "KRONOS_DRAIN_DELAY_S": "5"},
                                Path(tmp) / "c.log") as srv:
                results.append(probe_rolling_restart(srv))
        for workers in ("1", "2") if "worker_kill" in wanted else ():
            with running_server(home, {"KRONOS_MODEL": tag, "BENTOML_CONTAINERIZED": "true",
                                       "KRONOS_WORKERS": workers}, Path(tmp) / "d.log") as srv:
                results.append({**probe_worker_kill(srv), "workers": int(workers)})
        if "huge_request" in wanted:
            with running_server(home, {"KRONOS_MODEL": tag, "KRONOS_TIMEOUT_S": "20"},
                                Path(tmp) / "e.log") as srv:
                results.append(probe_huge_request(srv.url, 20, seconds))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
