"""Egress proxy overhead on loopback: bulk throughput and small-request latency vs direct.

    .venv/bin/python bench/proxy.py [--megabytes 256] [--requests 1000] [--rounds 3]

Bulk: one TCP stream of --megabytes from a local sender, read directly and
through a CONNECT tunnel (the path HTTPS downloads take), alternating, best of
--rounds. Small requests: as many HTTP GETs, each on a new connection, directly
and through the proxy (absolute-form plain HTTP), interleaved in ten blocks.
The proxy runs in its own process. Everything is measured in this run.
Last line: one JSON object with throughput_ratio (proxied / direct) and
added_latency_ms (per request).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from image.egress import proxy

CHUNK = 1 << 20


def _tcp(address: tuple[str, int] | Path) -> tuple[str, int]:
    assert isinstance(address, tuple), "the proxy listens on TCP here"
    return address


def _bulk_sender(total: int) -> tuple[socket.socket, threading.Event]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    payload = memoryview(b"\xa5" * CHUNK)

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                sent = 0
                while sent < total:
                    n = min(CHUNK, total - sent)
                    conn.sendall(payload[:n])
                    sent += n

    threading.Thread(target=serve, daemon=True).start()
    return server, stop


def _drain(sock: socket.socket, total: int) -> float:
    buffer = bytearray(CHUNK)
    got = 0
    started = time.perf_counter()
    while got < total:
        n = sock.recv_into(buffer)
        if not n:
            raise RuntimeError(f"stream ended after {got} of {total} bytes")
        got += n
    return time.perf_counter() - started


def _direct_bulk(port: int, total: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        return _drain(sock, total)


def _proxied_bulk(served: proxy.Proxy, port: int, total: int) -> float:
    with socket.create_connection(_tcp(served.http_address)) as sock:
        started = time.perf_counter()
        sock.sendall(f"CONNECT bench.test:{port} HTTP/1.1\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(1)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"proxy refused the bench stream: {head!r}")
        _drain(sock, total)
        return time.perf_counter() - started


class _Small(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def _get(address: tuple[str, int], request: bytes) -> None:
    with socket.create_connection(address) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    if not response.startswith(b"HTTP/1.0 200") or not response.endswith(b"ok"):
        raise RuntimeError(f"unexpected answer {response[:80]!r}")


def _timed(count: int, call: Callable[[], None]) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return time.perf_counter() - started


def _run_proxy(
    policy: proxy.Policy,
    addresses: multiprocessing.queues.Queue[proxy.Proxy],
    stop: multiprocessing.synchronize.Event,
) -> None:
    resolver = proxy.mapping_resolver({"bench.test": ["127.0.0.1"]})
    with proxy.serve_proxy(policy, resolver=resolver) as served:
        addresses.put(served)
        stop.wait(600)


@contextlib.contextmanager
def _proxy_process(policy: proxy.Policy) -> Iterator[proxy.Proxy]:
    """The proxy in its own process, as it runs for a VM: no GIL shared with the bench."""
    context = multiprocessing.get_context("spawn")
    addresses: multiprocessing.queues.Queue[proxy.Proxy] = context.Queue()
    stop = context.Event()
    process = context.Process(target=_run_proxy, args=(policy, addresses, stop))
    process.start()
    try:
        yield addresses.get(timeout=60)
    finally:
        stop.set()
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="bulk rounds (best counts)")
    args = parser.parse_args()
    total = args.megabytes << 20

    sender, stop = _bulk_sender(total)
    small = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Small)
    threading.Thread(target=small.serve_forever, daemon=True).start()
    bulk_port, small_port = sender.getsockname()[1], small.server_address[1]
    policy = proxy.Policy(allow=("bench.test",)).extended(
        addresses=["127.0.0.1"], ports=[bulk_port, small_port]
    )
    try:
        with _proxy_process(policy) as served:
            # Alternating rounds, best of each: other load on the machine hits
            # both sides alike instead of whichever happened to run second.
            direct_s = proxied_s = float("inf")
            for _ in range(args.rounds):
                direct_s = min(direct_s, _direct_bulk(bulk_port, total))
                proxied_s = min(proxied_s, _proxied_bulk(served, bulk_port, total))
            direct_mbps = total / direct_s / 1e6
            proxied_mbps = total / proxied_s / 1e6
            bulk = f"bulk {args.megabytes} MiB, best of {args.rounds}"
            print(f"{bulk}, direct:  {direct_mbps:8.1f} MB/s")
            print(f"{bulk}, proxied: {proxied_mbps:8.1f} MB/s")

            direct_req = f"GET /s HTTP/1.0\r\nHost: bench.test:{small_port}\r\n\r\n".encode()
            proxied_req = f"GET http://bench.test:{small_port}/s HTTP/1.0\r\n\r\n".encode()
            direct_small = proxied_small = 0.0
            block = max(1, args.requests // 10)
            for start in range(0, args.requests, block):
                count = min(block, args.requests - start)
                direct_small += _timed(count, lambda: _get(("127.0.0.1", small_port), direct_req))
                proxied_small += _timed(count, lambda: _get(_tcp(served.http_address), proxied_req))
            per_direct = direct_small / args.requests * 1e3
            per_proxied = proxied_small / args.requests * 1e3
            print(f"{args.requests} small requests direct:  {per_direct:.3f} ms each")
            print(f"{args.requests} small requests proxied: {per_proxied:.3f} ms each")
    finally:
        stop.set()
        sender.close()
        small.shutdown()
        small.server_close()
    print(
        json.dumps(
            {
                "bulk_bytes": total,
                "direct_mb_s": round(direct_mbps, 1),
                "proxied_mb_s": round(proxied_mbps, 1),
                "throughput_ratio": round(proxied_mbps / direct_mbps, 3),
                "requests": args.requests,
                "direct_ms": round(per_direct, 3),
                "proxied_ms": round(per_proxied, 3),
                "added_latency_ms": round(per_proxied - per_direct, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
