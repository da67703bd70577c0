"""The secret key `rayflow` generates when none is configured."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from rayflow._config import Settings
from rayflow._runtime.connection import secret_key_for


def test_the_generated_secret_key_file_is_never_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask a user can have
    try:
        settings = Settings(data_dir=tmp_path)
        keys: list[str] = []
        barrier = threading.Barrier(8)

        def start() -> None:
            barrier.wait()
            keys.append(secret_key_for(settings))

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.umask(old)
    path = tmp_path / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(set(keys)) == 1 and path.read_text() == keys[0]
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]
