"""Per-run quotas on the input log (issue 11, item 4): a browser token may send
to its run's input streams, but not without bound. Past the message quota a
send is 429, past the size quota 413, both with a JSON body naming the
setting; nothing is stored by a refused send.

The quotas are deployment settings, so this test starts its own embedded
deployment (a script with `rayflow.init(serve=True, …)`) with small ones.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
from _browser_fixtures import free_port
from _embedded import embedded_script

SCRIPT = textwrap.dedent(
    """
    import sys

    import rayflow
    from rayflow import streams, task

    gate = streams.input("gate", dict)
    notes = streams.input("notes", dict)
    other = streams.input("other", dict)


    @task(id="quota-wait", inputs=[notes, other])
    async def quota_wait(payload: dict) -> dict:
        return (await gate.once(timeout_s=600)).unwrap()  # never sent: the run stays live


    rayflow.init(
        data_dir=sys.argv[1],
        serve=True,
        http_port=int(sys.argv[2]),
        max_input_messages_per_run=3,
        max_input_log_bytes_per_run=2000,
    )
    quota_wait.register().result()
    print("READY", flush=True)
    sys.stdin.read()
    """
)


def test_a_runs_input_log_is_bounded(tmp_path: Path) -> None:
    port, secret = free_port(), "sk_" + "q" * 32
    with embedded_script(tmp_path, SCRIPT, port, secret):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as c:
            r = c.post(
                "/api/v1/tasks/quota-wait/trigger",
                headers={"Authorization": f"Bearer {secret}"},
                json={"payload": {}},
            )
            assert r.status_code == 200, r.text
            run_id, token = r.json()["id"], r.headers["x-trigger-jwt"]
            auth = {"Authorization": f"Bearer {token}"}

            def send(stream: str, data: object) -> httpx.Response:
                return c.post(
                    f"/realtime/v1/streams/{run_id}/input/{stream}",
                    headers=auth,
                    json={"data": data},
                )

            # size first: one message alone past the run's 2000 characters
            big = send("other", {"text": "x" * 2500})
            assert big.status_code == 413, big.text
            assert "RAYFLOW_MAX_INPUT_LOG_BYTES_PER_RUN" in big.json()["error"]
            for n in range(3):  # the quota counts every input stream of the run
                assert send("other" if n else "notes", {"n": n}).status_code == 200
            over = send("notes", {"n": 3})
            assert over.status_code == 429, over.text
            body = over.json()
            assert (
                body["code"] == "TooManyRequests"
                and "RAYFLOW_MAX_INPUT_MESSAGES_PER_RUN" in body["error"]
            )
            streams = c.get(f"/rayflow/v1/runs/{run_id}/streams", headers=auth).json()
            counts = {i["id"]: i["messages"] for i in streams["inputs"]}
            assert counts == {"notes": 1, "other": 2}, counts
