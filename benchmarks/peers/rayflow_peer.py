"""rayflow itself, through its public API only (DESIGN §7) — placeholder until the core lands."""

from __future__ import annotations

import sys

import _common as c

NOT_YET = (
    "the rayflow core has not landed: rayflow_peer needs rayflow.init(), @task with "
    ".trigger(), streams.define(...).append/read and streams.input(...).send/once/wait"
)


def main(argv: list[str]) -> None:
    if argv[1] == "bench":
        c.write_result(argv, {"not_yet": NOT_YET})
        return
    raise NotImplementedError(NOT_YET)


if __name__ == "__main__":
    main(sys.argv)
