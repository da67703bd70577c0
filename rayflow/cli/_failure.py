"""How the CLI fails: one line on stderr and exit 1, never a traceback
(RAYFLOW_DEBUG=1 brings the traceback back for an unexpected error)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from rayflow.cli._render import err
from rayflow.errors import RayflowError

F = TypeVar("F", bound=Callable[..., Any])


class CLIError(Exception):
    """A user-facing failure of the CLI itself (bad argument, nothing running)."""


def friendly(fn: F) -> F:
    """One line on stderr and exit 1 for every error; never a traceback
    (set RAYFLOW_DEBUG=1 to get one)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except (CLIError, RayflowError) as e:
            _die(f"{type(e).__name__ + ': ' if isinstance(e, RayflowError) else ''}{e}")
        except Exception as e:
            if os.environ.get("RAYFLOW_DEBUG"):
                raise
            _die(f"unexpected {type(e).__name__}: {e} (set RAYFLOW_DEBUG=1 for the traceback)")

    return wrapper  # type: ignore[return-value]


def _die(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    err.print(f"[bold red]error:[/] {escape(first)}", markup=True, highlight=False)
    raise typer.Exit(1)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CLIError(
            f"{what} is not valid JSON ({e.msg} at column {e.colno}): {text!r}"
        ) from None
