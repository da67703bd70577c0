"""Per-run quotas on the input log (issue 11, item 4): a browser token may send
to its run's input streams, but not without bound. Past the message quota a
send is 429, past the size quota 413, both with a JSON body naming the
setting; nothing is stored by a refused send.

The quotas are deployment settings, so this test starts its own embedded
deployment (a script with `rayflow.init(serve=True, …)`) with small ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
from _browser_fixtures import ROOT, dev_env, free_port
from conftest import eventually

SCRIPT = textwrap.dedent(
    """
    import sys

    import rayflow
    from rayflow import streams, task

    gate = streams.input("gate", dict)


    @task(id="quota-wait")
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
    script = tmp_path / "quota.py"
    script.write_text(SCRIPT)
    port, secret = free_port(), "sk_" + "q" * 32
    env = dev_env(tmp_path / "data", port, secret)
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "quota.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "data"), str(port)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return "READY" in log.read_text()

        eventually(ready, timeout_s=240, what="the deployment to start")
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
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
