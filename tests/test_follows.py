"""The RunActor's side of readers' long polls (`follows.Follow`): a reader
that found its run through the Controller may reach the run's actor while
the actor is still claiming the run (the Controller placed it, the claim's
transaction has not committed). Such a reader waits there for the claim —
sent to the Store instead, it left the poll and located the run again a
quarter of a second later, for every run of a burst of triggers."""

from __future__ import annotations

from rayflow._runtime.follows import Follow


def test_a_poll_waits_for_a_run_being_claimed_and_looks_at_it_once_claimed() -> None:
    claiming = {"r1"}
    polls = [("r1", "out", 0), ("r2", "out", 0)]
    follow = Follow(lambda run_id: None, polls, claiming.__contains__)
    follow.watch()
    assert follow.watching  # r1 is being claimed here: something to wait on
    follow.wake.clear()
    follow.look_at("r1")  # claimed (or its claim failed): look again
    assert follow.wake.is_set() and follow.take_changed() == {"r1"}
    follow.wake.clear()
    follow.look_at("r3")  # not polled here
    assert not follow.wake.is_set() and follow.take_changed() == set()
    claiming.clear()
    assert not follow.watching  # neither executes nor is claimed here: the poll ends
