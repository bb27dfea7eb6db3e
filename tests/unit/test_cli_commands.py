"""Every `tunelab` command declares its parameters with `Annotated`, so it is also an ordinary Python function.

A `typer.Option(...)` default reaches the body as an OptionInfo object when the function is called directly
(`export` calling `verify` once crashed with "'OptionInfo' object has no attribute 'read_text'").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import typer
from typer.models import ParameterInfo

from tunelab.cli import app


def commands(t: typer.Typer, prefix: str = "") -> Iterator[tuple[str, Callable]]:
    for c in t.registered_commands:
        assert c.callback is not None
        yield prefix + (c.name or c.callback.__name__), c.callback
    for g in t.registered_groups:
        assert g.typer_instance is not None
        yield from commands(g.typer_instance, f"{prefix}{g.name} ")


def typer_defaults(fn: Callable) -> list[str]:
    return [n for n, p in inspect.signature(fn).parameters.items() if isinstance(p.default, ParameterInfo)]


def test_no_command_has_a_typer_object_as_a_default() -> None:
    found = dict(commands(app))
    assert {"train", "chat", "export", "verify", "serve", "data check", "init"} <= set(found)
    bad = {name: typer_defaults(fn) for name, fn in found.items() if typer_defaults(fn)}
    assert not bad, f"use Annotated[T, typer.Option(...)] = default for these parameters: {bad}"


def test_the_check_sees_an_old_style_default() -> None:
    def old(x: int = typer.Option(3)) -> None: ...

    assert typer_defaults(old) == ["x"]
