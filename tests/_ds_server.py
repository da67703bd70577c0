"""A rayflow deployment with its HTTP API, in a process of its own: for the
Durable Streams conformance suite, which needs the endpoint open to
anonymous clients (RAYFLOW_DURABLE_STREAMS_ANONYMOUS, loopback only).

    python tests/_ds_server.py <store url> <port> <data dir>

Prints `READY <the API's base URL>` once it answers, then serves until its stdin
closes (the test that started it ended) and shuts Ray down.
"""

from __future__ import annotations

import sys

import ray

import rayflow
from serve.app import wait_ready


def main() -> None:
    store, port, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rayflow.init(
        store=store,
        data_dir=data_dir,
        serve=True,
        http_host="127.0.0.1",
        http_port=port,
        durable_streams_anonymous=True,
        durable_streams_long_poll_s=3.0,
        pool_size=0,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=120)
    print(f"READY {url}", flush=True)
    sys.stdin.read()
    ray.shutdown()


if __name__ == "__main__":
    main()
