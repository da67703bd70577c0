"""The RunActor's output-stream service: the methods readers and writers in
other processes call on the runs it executes (`follow_many` for readers'
polls, `published` for outside writers' commits, and the counters tests and
benchmarks read). A mixin of `RunActor` (`run_actor`), which owns the state
it uses: the runs' `Execution`s, the open follows, the kicked polls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from rayflow._config import Settings
from rayflow._runtime import hops
from rayflow._runtime.arrivals import Arrivals
from rayflow._runtime.attempts import Execution
from rayflow._runtime.calls import RunMoved
from rayflow._runtime.follows import Follow
from rayflow._runtime.named_tails import path_of, tails
from rayflow._runtime.push_inbox import Address
from rayflow._runtime.stream_commit import loop_committer
from rayflow._runtime.stream_rows import FollowReply, ReadReply, Row, pack_replies

#: `_peek_now` could not answer without awaiting
_AWAIT: Any = object()


class StreamService:
    # the RunActor's state this service reads (set in `RunActor.__init__`)
    conn: Any
    settings: Settings
    name: str
    polls_served: int
    _follows: dict[str, Follow]
    _kicked: set[str]
    _outcomes: dict[str, Any]
    _executing: Callable[[str], Execution | None]
    _claiming: Callable[[str], bool]
    _news_while_claiming: Callable[..., None]
    _arrivals: Arrivals
    _arriving: Callable[[str], bool]

    async def follow_many(
        self,
        polls: list[tuple[str, str, int]],
        limit: int,
        wait_s: float,
        poll_id: str,
        inbox: Address | None = None,
    ) -> AsyncIterator[FollowReply]:
        """Replies to many readers in one process as a stream (a Ray
        streaming generator, `actor_polls`): `polls` are (run id, key, next
        index), of any runs this actor executes. Yields, by position in
        `polls`, what readers have something new — rows, a sealed segment,
        `closed`, or `from_store` when this actor does not execute that run —
        as soon as they have it, with no call to wait for in between: under
        a flood a commit's rows leave at once instead of after the reader's
        next call has arrived (measured: ~3.5 ms of a chunk's ~8 ms). A
        reader's position moves past the rows it was sent; a reader sent
        anything else leaves the stream. After the first look only the
        readers of runs with news are looked at again (`follows`). Ends at
        `kick(poll_id)`, after `wait_s` in all (the caller follows again: a
        stream whose caller is gone cannot go on for long), or when no run
        it follows executes here. A key nobody wrote allocates nothing here;
        its reader waits like the rest. `inbox`: where the reader process
        also takes rows pushed by outside writers (`push_inbox`; `published`
        names it to them). A key
        `named_tails.NAMED_KEY + path` follows a named stream the run
        writes (a session's `.out`)."""
        if hops.enabled():
            hops.mark("poll_got", [k for _, k, _ in polls])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        follow = self._follows[poll_id] = Follow(self._executing, polls, self._arriving, inbox)
        if poll_id in self._kicked:
            self._kicked.discard(poll_id)
            follow.kick()  # the kick came before this call: answer at once
        first = True
        try:
            while follow.polls:
                runs = None if first else follow.take_changed()
                # watch before looking: a commit while looking is not missed
                follow.watch(runs)
                follow.wake.clear()
                self.polls_served += 1
                rows_out: list[tuple[int, list[Row]]] = []
                others: dict[int, ReadReply] = {}
                for i in follow.looking_at(runs):
                    poll = follow.polls.get(i)
                    if poll is None:
                        continue  # it left while this look awaited
                    run_id, key, start = poll
                    reply = self._peek_now(run_id, key, start, limit)
                    if reply is _AWAIT:
                        reply = await self._peek(run_id, key, start, limit, look=first)
                    if reply is None:
                        continue
                    if reply.rows:
                        rows_out.append((i, reply.rows))
                        follow.polls[i] = (run_id, key, reply.rows[-1][0] + 1)
                        if hops.enabled():
                            ids = [hops.stream_id(run_id, key, r[0]) for r in reply.rows]
                            hops.mark("reply", ids)
                    else:
                        others[i] = reply
                        follow.forget(i)
                first = False
                if rows_out or others:
                    yield pack_replies(rows_out, others)
                if follow.kicked or not follow.polls:
                    return
                left = deadline - loop.time()
                if left <= 0 or not follow.watching:
                    return
                if follow.changed:
                    continue
                # wait on the watched runs' news itself, not on a task that
                # waits for it: then this poll answers first once a commit is
                # published, ahead of the writers the commit resolves (under
                # a flood a writer's next burst ran first: ~1 ms)
                timer = loop.call_later(left, follow.wake.set)
                try:
                    await follow.wake.wait()
                finally:
                    timer.cancel()
        finally:
            follow.close()
            if self._follows.get(poll_id) is follow:
                del self._follows[poll_id]

    def _peek_now(self, run_id: str, key: str, start: int, limit: int) -> Any:
        """`_peek` without a coroutine for the usual case (a run executing
        here, its stream's buffer loaded); `_AWAIT` when it must be awaited."""
        execution = self._executing(run_id)
        if execution is None:
            return _AWAIT
        buf = execution.buffers.streams.get(key)
        if buf is None or not buf.loaded or buf.load_error is not None:
            return _AWAIT
        return buf.peek_now(start, limit)

    async def _peek(
        self, run_id: str, key: str, start: int, limit: int, *, look: bool
    ) -> ReadReply | None:
        execution = self._executing(run_id)
        if execution is None:
            if self._arriving(run_id):
                # its reader waits here: the claim (or the run's arrival) wakes it
                return None
            return ReadReply(rows=[], from_store=True)
        path = path_of(key)
        if path is not None:
            # a named stream (a session's `.out`) the run writes: the rows
            # this process committed to it (`named_tails`)
            return tails().peek(path, start, limit)
        buffers = execution.buffers
        # the Store is asked about a key this actor has no buffer for once
        # per poll; after that only a write through this actor creates it
        buf = await buffers.find(key) if look else buffers.streams.get(key)
        if buf is None:
            return ReadReply(rows=[], closed=True) if buffers.closed else None
        return await buf.peek(start, limit)

    def follower_count(self, run_id: str) -> int:
        """How many reader processes follow streams of the run here now (open
        `follow_many` calls polling it; tests count them)."""
        return sum(1 for f in self._follows.values() if run_id in f.by_run)

    def poll_count(self) -> int:
        """How many looks (steps of `follow_many`) this actor has answered."""
        return self.polls_served

    def kick(self, poll_id: str) -> None:
        """End the `follow_many` stream `poll_id` now (its process has a new reader)."""
        follow = self._follows.get(poll_id)
        if follow is not None:
            follow.kick()
        else:  # it may overtake its call: the call finds it
            if len(self._kicked) > 1000:
                self._kicked.clear()
            self._kicked.add(poll_id)

    #: calls to `published` answered by this actor, for every run it served
    #: (how many Ray calls outside writers cost; read through `published_calls`)
    published_count = 0

    async def published(
        self, news: list[tuple[str, list[tuple[str, list[Row]]]]]
    ) -> tuple[list[str], dict[str, list[Address]]]:
        """Outside writers of one process committed `news` — per run, (key,
        rows) — to the streams of runs this actor executes (`run_appender`:
        one call per actor, however many of its runs were written): take the
        rows into the streams' tails and wake their readers. Answers the runs
        this actor does not execute (the writer locates them again) and, per
        run it executes, the inboxes of the processes following it now
        (`push_inbox`: the writer pushes its next commits' rows there
        itself). While a run is being claimed or released here there is
        nothing to do for it (a claimed run's streams written meanwhile load
        their length from the Store, `RunActor._claim_news`; a released
        run's readers read the Store)."""
        self.published_count += 1
        moved: list[str] = []
        followers: dict[str, list[Address]] = {}
        learning = []
        for run_id, run_news in news:
            if run_id not in self._outcomes:
                # (maybe placed here and on its way: a fresh start takes it)
                self._arrivals.came(run_id, outputs=tuple(k for k, _ in run_news))
                moved.append(run_id)
                continue
            execution = self._executing(run_id)
            if execution is None and self._claiming(run_id):
                # the claim's reads may not have seen these rows: read then
                self._news_while_claiming(run_id, outputs=tuple(k for k, _ in run_news))
            if execution is None or execution.buffers.closed:
                continue
            followers[run_id] = list(
                {f.inbox for f in self._follows.values() if f.inbox and run_id in f.runs}
            )
            buffers = execution.buffers
            learning += [buffers.get(key).learn(rows) for key, rows in run_news]
        if len(learning) == 1:
            await learning[0]
        elif learning:  # one stream waiting for its length holds up no other
            await asyncio.gather(*learning)
        return moved, followers

    def published_calls(self) -> int:
        """Calls to `published` this actor has answered (all runs)."""
        return self.published_count

    async def stream_commits(self) -> int:
        """Transactions this actor's group commit made for the output streams
        of all its runs (tests and benchmarks count them)."""
        return loop_committer(self.conn.store, self.settings.max_stream_bytes).commits

    def stream_stats(self, run_id: str) -> dict[str, dict[str, int]]:
        """Per stream of the run (when it executes here): committed length,
        chunks in the heap tail, sealed segments."""
        execution = self._executing(run_id)
        if execution is None:
            return {}
        return {
            key: {"length": b.length, "tail": len(b.tail), "segments": len(b.segments)}
            for key, b in execution.buffers.streams.items()
        }

    async def close_stream(self, run_id: str, key: str) -> None:
        execution = self._executing(run_id)
        if execution is None:
            raise RunMoved(f"run {run_id} is not executing on {self.name}")
        buf = execution.buffers.get(key)
        await buf.drain()
        await asyncio.to_thread(self.conn.store.close_stream, run_id, key)
        buf.close()
