"""Multi-node scenarios on a real Ray cluster of several nodes on this machine.

    python tests/cluster_scenarios.py STORE_URL RESULT_JSON [SCENARIO ...]

Starts a `ray.cluster_utils.Cluster` (a head node and worker nodes, every
one on 127.0.0.1), runs the scenarios in order against one rayflow
deployment on STORE_URL, writes {scenario: "ok" | error text} to RESULT_JSON
and shuts the cluster down. tests/test_multinode.py drives it, once per
store, in a subprocess: the pytest session already holds a Ray connection.

The worker nodes carry the custom resource `worker`; every task here asks
for it, so runs land on worker nodes and never on the head, which holds the
control plane (Controller, Inbox actors). Scenarios run in a fixed order and
change the cluster as they go (nodes are added and removed).
"""

from __future__ import annotations

import os

# before Ray is imported (docs/scaling.md): nodes that advertise 127.0.0.1
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import psutil  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import rayflow  # noqa: E402
from rayflow import step, streams, task  # noqa: E402
from rayflow._runtime import connection, inbox  # noqa: E402

T = TypeVar("T")
NAMESPACE = "rf-multinode"
WORKER = {"worker": 1.0}
# Ray gives an actor that names any resource but no num_cpus one whole CPU
# for its lifetime; these runs wait on I/O, so they ask for none (a 2-CPU
# worker node would hold only two of them otherwise)
#: node death is noticed after period × threshold (Ray's defaults: ~15 s)
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}

ticks = streams.define("ticks", int)
log = streams.define("log", str)
go = streams.input("go", str)
msgs = streams.input("msgs", str)


def eventually(check: Callable[[], T], *, timeout_s: float = 60.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def record_node(path: str) -> None:
    """One line per execution segment: the node it ran on (all nodes share
    this machine's file system)."""
    with open(path, "a") as f:
        f.write(f"{ray.get_runtime_context().get_node_id()} {os.getpid()}\n")


def lines(path: str) -> list[str]:
    p = Path(path)
    return p.read_text().splitlines() if p.exists() else []


def slow_tick(i: int, path: str) -> int:
    with open(path, "a") as f:
        f.write(f"{i}\n")
    time.sleep(0.1)
    return i


# -- tasks (module-level in __main__: cloudpickle ships them by value) --------
@task(id="mn-where", num_cpus=2, resources=WORKER)
async def where(payload: dict) -> str:
    (await go.once(timeout_s=60)).unwrap()
    return ray.get_runtime_context().get_node_id()


@task(id="mn-stream", num_cpus=0, resources=WORKER)
async def stream_numbers(payload: dict) -> int:
    n = payload["n"]
    await ticks.pipe(range(n)).wait_until_complete()
    return n


@task(id="mn-waiter", num_cpus=0, resources=WORKER)
async def waiter(payload: dict) -> str:
    record_node(payload["nodes"])
    await log.append("before")
    r = await go.wait(timeout=payload.get("timeout", "1h"))
    record_node(payload["nodes"])
    await log.append("after")
    return r.output if r.ok else "timed out"


@task(id="mn-ticker", num_cpus=0, resources=WORKER)
async def ticker(payload: dict) -> int:
    record_node(payload["nodes"])
    if payload.get("gated"):
        (await go.once(timeout_s=60)).unwrap()
    for i in range(payload["n"]):
        await step(f"tick-{i}", slow_tick, i, payload["steps"])
        await ticks.append(i)
    return payload["n"]


@task(id="mn-collector", num_cpus=0, resources=WORKER)
async def collector(payload: dict) -> list[str]:
    got: list[str] = []
    while True:
        m = (await msgs.once(timeout_s=120)).unwrap()
        if m == "stop":
            return got
        got.append(m)


# -- the cluster ---------------------------------------------------------------
def start_cluster() -> Cluster:
    """A head node on loopback; tried twice, since Ray's node start-up can
    time out on a loaded 2-core box."""
    for attempt in (1, 2):
        cluster = Cluster()
        try:
            cluster.add_node(
                num_cpus=1,
                node_ip_address="127.0.0.1",
                include_dashboard=False,
                _system_config=SYSTEM_CONFIG,
            )
            return cluster
        except Exception:
            cluster.shutdown()
            if attempt == 2:
                raise
            print("the head node did not start; trying once more")
    raise AssertionError("unreachable")


class Scenarios:
    def __init__(self, store_url: str, tmp: Path) -> None:
        self.store_url, self.tmp = store_url, tmp
        self.cluster = start_cluster()
        self.workers: list[Any] = []
        try:
            self.add_worker()
            ray.init(address=self.cluster.address, namespace=NAMESPACE)
            self.head_id = ray.get_runtime_context().get_node_id()
            rayflow.init(
                address=self.cluster.address,
                store=store_url,
                namespace=NAMESPACE,
                data_dir=tmp / "data",
                pool_size=0,
                timer_interval_s=0.2,
            )
        except BaseException:
            self.shutdown()
            raise

    def add_worker(self, resources: dict[str, float] | None = None, num_cpus: int = 2) -> Any:
        node = self.cluster.add_node(
            num_cpus=num_cpus,
            resources=resources or {"worker": 100},
            node_ip_address="127.0.0.1",
        )
        self.cluster.wait_for_nodes()
        self.workers.append(node)
        return node

    def remove_worker(self, node: Any) -> None:
        """Lose a node as when its machine dies: its raylet and every worker
        process on it (Cluster.remove_node alone leaves the raylet's worker
        processes running as orphans, still talking to the Store)."""
        raylet = node.all_processes["raylet"][0].process.pid
        workers = psutil.Process(raylet).children(recursive=True)
        self.cluster.remove_node(node, allow_graceful=False)
        for proc in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(workers, timeout=10)
        self.workers.remove(node)

    def worker_ids(self) -> set[str]:
        return {n.node_id for n in self.workers}

    def shutdown(self) -> None:
        try:
            rayflow.shutdown(stop_runs=True)
        finally:
            ray.shutdown()
            self.cluster.shutdown()

    def path(self, name: str) -> str:
        return str(self.tmp / f"{name}-{time.monotonic_ns()}")

    @staticmethod
    def status(run_id: str) -> str:
        return rayflow.runs.retrieve(run_id).result().status

    @staticmethod
    def actor_node(handle: Any) -> str:
        info = ray._private.state.state.actor_table(handle._actor_id.hex())
        return str(info["Address"]["NodeID"])

    # -- scenarios ------------------------------------------------------------
    def placement(self) -> None:
        """Runs go to worker nodes with the resources their task asked for;
        the Controller and Inbox actors stay on the head node."""
        cpus_before = ray.available_resources().get("CPU", 0)
        handle = where.trigger({}).result()
        eventually(lambda: self.status(handle.id) == "EXECUTING", what="the run to start")
        eventually(
            lambda: ray.available_resources().get("CPU", 0) <= cpus_before - 2,
            what="the run's actor to hold num_cpus=2",
        )
        go.send(handle.id, "now").result()
        run = rayflow.runs.wait(handle.id).result(timeout_s=60)
        assert run.output in self.worker_ids(), (run.output, self.worker_ids())
        conn = connection.current()
        assert self.actor_node(conn.controller) == self.head_id
        assert self.actor_node(inbox.inbox_for("go", handle.id)) == self.head_id

    def stream_across_nodes(self) -> None:
        """A stream written on a worker node is read live from the driver on
        the head node: every chunk once, in order."""
        handle = stream_numbers.trigger({"n": 3000}).result()
        got = list(ticks.read(handle.id, start_index=0, timeout_s=60))
        assert got == list(range(3000)), (len(got), got[:5], got[-5:])
        assert rayflow.runs.wait(handle.id).result(timeout_s=60).output == 3000

    def revive_on_another_node(self) -> None:
        """A run suspended in .wait() holds nothing on its node: that node
        goes away, and a send revives the run on another one."""
        nodes = self.path("nodes")
        handle = waiter.trigger({"nodes": nodes}).result()
        eventually(lambda: self.status(handle.id) == "WAITING", what="the run to suspend")
        first = lines(nodes)[0].split()[0]
        (old,) = [n for n in self.workers if n.node_id == first]
        self.add_worker()
        self.remove_worker(old)
        go.send(handle.id, "approved").result()
        run = rayflow.runs.wait(handle.id).result(timeout_s=90)
        assert run.status == "COMPLETED" and run.output == "approved", run
        seen = [line.split()[0] for line in lines(nodes)]
        assert seen[0] == first and seen[-1] != first and seen[-1] in self.worker_ids(), seen
        assert list(log.read(handle.id, timeout_s=1)) == ["before", "after"]

    def worker_node_lost_mid_run(self) -> None:
        """A worker node removed mid-run: its runs resume on another node
        from their journals; every stream ends with each chunk exactly once,
        and completed steps do not run again."""
        n, runs = 60, []
        for _ in range(3):
            nodes, steps = self.path("nodes"), self.path("steps")
            payload = {"n": n, "nodes": nodes, "steps": steps, "gated": True}
            handle = ticker.trigger(payload).result()
            runs.append((handle.id, nodes, steps))
        # all three start stepping together, so all three are mid-run when
        # their node goes
        for run_id, _, _ in runs:
            eventually(lambda r=run_id: self.status(r) == "EXECUTING", what="every run to start")
            go.send(run_id, "go").result()
        for _, _, steps in runs:
            eventually(lambda s=steps: len(lines(s)) >= 5, what="5 steps of every run")
        starts = {lines(nodes)[0].split()[0] for _, nodes, _ in runs}
        pids = [int(lines(nodes)[0].split()[1]) for _, nodes, _ in runs]
        for node in [w for w in self.workers if w.node_id in starts]:
            self.remove_worker(node)
        assert not any(psutil.pid_exists(p) for p in pids), "a run's process outlived its node"
        self.add_worker()  # the runs' new actors wait for a node with `worker`
        for run_id, nodes, steps in runs:
            run = rayflow.runs.wait(run_id).result(timeout_s=120)
            assert run.status == "COMPLETED" and run.output == n, run
            got = list(ticks.read(run_id, start_index=0, timeout_s=5))
            assert got == list(range(n)), (run_id, got)
            seen = [line.split()[0] for line in lines(nodes)]
            assert len(seen) == 2 and seen[1] not in starts, seen
            # a step in flight when the node died runs again; no other does
            done = [int(x) for x in lines(steps)]
            assert sorted(set(done)) == list(range(n)) and len(done) <= n + 1, done

    def inbox_node_lost(self) -> None:
        """The node holding an Inbox actor is removed while sends flow: every
        acknowledged message reaches the run exactly once, in order."""
        # a deployment pins Inbox actors to the head node; to lose one with
        # its node, start it (as inbox_for would, but asking for a resource
        # only `host` has, and later `spare`) before the first send
        host = self.add_worker({"inbox_host": 1}, num_cpus=1)
        handle = collector.trigger({}).result()
        eventually(lambda: self.status(handle.id) == "EXECUTING", what="the run to start")
        conn = connection.current()
        # Inboxes are a fixed set of shards shared by every run and stream: the
        # one this run's sends go to may already be up on the head node (earlier
        # scenarios sent through it). Stop it for good, so that the shard is
        # started again below where this scenario can lose it.
        name = inbox.actor_name("msgs", handle.id)
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)

        def name_free() -> bool:
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                return True
            return False

        eventually(name_free, what=f"{name} to stop")
        inbox.forget("msgs", handle.id)
        actor = inbox.InboxActor.options(
            name=inbox.actor_name("msgs", handle.id),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=1000,
            num_cpus=0,
            resources={"inbox_host": 0.01},
        ).remote(conn.settings.model_dump_json())
        ray.get(actor.ready.remote(), timeout=60)
        assert self.actor_node(actor) == host.node_id
        spare = self.add_worker({"inbox_host": 1}, num_cpus=1)
        acked: list[str] = []
        failed: list[str] = []

        def sender() -> None:
            for i in range(150):
                text = f"m{i}"
                try:
                    msgs.send(handle.id, text).result(timeout_s=60)
                    acked.append(text)
                except Exception:
                    failed.append(text)

        thread = threading.Thread(target=sender)
        thread.start()
        eventually(lambda: len(acked) >= 40, what="40 acknowledged sends")
        self.remove_worker(host)
        thread.join(timeout=120)
        assert not thread.is_alive(), "the sender did not finish"
        msgs.send(handle.id, "stop").result(timeout_s=60)
        run = rayflow.runs.wait(handle.id).result(timeout_s=60)
        got: list[str] = run.output
        assert len(got) == len(set(got)), "a message arrived twice"
        assert set(acked) <= set(got), sorted(set(acked) - set(got))
        assert set(got) <= set(acked) | set(failed)
        assert got == sorted(got, key=lambda m: int(m[1:])), "out of order"
        assert self.actor_node(actor) == spare.node_id
        print(f"inbox_node_lost: {len(acked)} acked, {len(failed)} failed, {len(got)} received")

    def controller_restart(self) -> None:
        """The Controller is killed and Ray restarts it: a live run finishes
        (and its waiters hear of it), a waitpoint is resolved by a send and a
        deadline fires, with no one calling the new Controller first."""
        n = 40
        nodes, steps = self.path("nodes"), self.path("steps")
        live = ticker.trigger({"n": n, "nodes": nodes, "steps": steps}).result()
        pending = waiter.trigger({"nodes": self.path("nodes")}).result()
        timed = waiter.trigger({"nodes": self.path("nodes"), "timeout": "4s"}).result()
        for run_id in (pending.id, timed.id):
            eventually(lambda r=run_id: self.status(r) == "WAITING", what="runs to suspend")
        eventually(lambda: len(lines(steps)) >= 5, what="the live run to make progress")
        conn = connection.current()
        ray.kill(conn.controller, no_restart=False)
        go.send(pending.id, "approved").result(timeout_s=60)
        assert rayflow.runs.wait(pending.id).result(timeout_s=60).output == "approved"
        assert rayflow.runs.wait(timed.id).result(timeout_s=60).output == "timed out"
        run = rayflow.runs.wait(live.id).result(timeout_s=60)
        assert run.status == "COMPLETED" and run.output == n, run
        assert list(ticks.read(live.id, start_index=0, timeout_s=5)) == list(range(n))
        assert len(lines(nodes)) == 1, "the live run was restarted, not re-attached"


ORDER = [
    "placement",
    "stream_across_nodes",
    "revive_on_another_node",
    "worker_node_lost_mid_run",
    "inbox_node_lost",
    "controller_restart",
]


def non_loopback_sockets() -> list[str]:
    """TCP sockets of this process and every process of the cluster (its
    descendants) bound or connected to anything but loopback."""
    me = psutil.Process()
    pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
    bad = []
    for c in psutil.net_connections(kind="tcp"):
        if c.pid not in pids:
            continue
        for addr in (c.laddr, c.raddr):
            if addr and not addr.ip.startswith(("127.", "::1", "::ffff:127.")):
                bad.append(f"pid {c.pid} {c.status} {c.laddr} -> {c.raddr}")
    return bad


def main() -> int:
    store_url, result_path, *wanted = sys.argv[1:]
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="rf-multinode-") as tmp:
        scenarios = Scenarios(store_url, Path(tmp))
        try:
            for name in [s for s in ORDER if not wanted or s in wanted]:
                started = time.monotonic()
                try:
                    getattr(scenarios, name)()
                    results[name] = "ok"
                except Exception:
                    results[name] = traceback.format_exc()
                print(f"{name}: {results[name][:2000]} ({time.monotonic() - started:.1f} s)")
                Path(result_path).write_text(json.dumps(results))
            bad = non_loopback_sockets()
            results["loopback_only"] = "ok" if not bad else "\n".join(bad)
        finally:
            scenarios.shutdown()
            Path(result_path).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
