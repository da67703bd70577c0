"""The replica's change feed (serve/run_feed.py), without Ray: named streams'
changes travel on it as `stream:<path>` keys and wake only their readers."""

from __future__ import annotations

from rayflow._runtime.named_signals import feed_key
from serve.run_feed import Changes, RunFeed


def test_a_named_streams_change_wakes_its_readers_and_no_wait_for_any_run() -> None:
    feed = RunFeed()
    since = Changes(feed.gen)
    feed._record([feed_key("ds/chat")])
    assert feed.changed_since(since, {feed_key("ds/chat")})
    assert not feed.changed_since(since, {feed_key("ds/other")})
    assert not feed.changed_since(since, None)  # a tag subscription: no run changed
    feed._record(["run_1"])
    assert feed.changed_since(since, None)
    assert feed.changed_since(since, {"run_1"})
