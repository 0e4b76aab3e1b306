"""Model and dataset plugins: factories that installed packages register as entry points in the
groups `edgetune.models` and `edgetune.datasets` (edgetune.schemas MODEL_PLUGINS,
DATASET_PLUGINS), the packaging standard's plugin mechanism, read with importlib.metadata.

A spec names an entry point, never an import path: only a name registered in the group is
loaded, so an HTTP request can run only code that the worker's administrator installed. Workers
load them (and a pipeline's own process, in `edgetune.build_model`); the API only reads the names
workers advertise. Torch-free: listing and loading a factory imports nothing but its module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any

# Factories a process hands the engine directly (edgetune.inprocess: a notebook's own module and
# tensors), by (group, name). A context variable, not a module dict: only the caller's own thread
# (context) sees them, so a worker or API thread in the same process never resolves a spec to one,
# and `installed` (what workers advertise) never lists them.
_LOCAL: ContextVar[Mapping[tuple[str, str], Callable[..., Any]]] = ContextVar(
    "edgetune_local_plugins", default=MappingProxyType({})
)


class PluginNotFound(LookupError):
    """No entry point of that name in the group, installed here."""


def _version(entry: EntryPoint) -> str:
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown"


def installed(group: str) -> dict[str, str]:
    """Entry-point name → "distribution version" of every plugin in `group` installed here."""
    return {entry.name: _version(entry) for entry in entry_points(group=group)}


def load(group: str, name: str) -> Callable[..., Any]:
    """The factory registered as `name` in `group`; PluginNotFound naming the installed ones
    when there is none (a name registered in any other group is not looked at)."""
    local = _LOCAL.get().get((group, name))
    if local is not None:
        return local
    found = entry_points(group=group).select(name=name)
    if not found:
        known = ", ".join(sorted(installed(group))) or "none"
        raise PluginNotFound(
            f"{name!r} is not a plugin in the entry-point group {group!r} installed on this "
            f"worker (installed: {known})"
        )
    # Two distributions registering one name: the first found wins, as for console scripts.
    factory = next(iter(found)).load()
    if not callable(factory):
        raise PluginNotFound(f"the entry point {name!r} in {group!r} is not callable")
    return factory


@contextmanager
def local(factories: Mapping[tuple[str, str], Callable[..., Any]]) -> Iterator[None]:
    """Within the block, `load(group, name)` in this context returns `factories[(group, name)]`
    before any entry point: how edgetune.inprocess runs a user's own factory through the same
    code path as a plugin's."""
    token = _LOCAL.set(MappingProxyType({**_LOCAL.get(), **factories}))
    try:
        yield
    finally:
        _LOCAL.reset(token)
