"""The one place that lists the built-in strategies and platforms."""

from __future__ import annotations

from pathlib import Path

from impls.machine.platform import load_platform_file, load_platform_module
from impls.machine.plugin import Ops, PluginError
from impls.machine.strategy import load_strategy_file, load_strategy_module

STRATEGY_MODULES = {
    "direct": "impls.native.mmu_gather",
    "semi-rcu": "impls.xen_semi_rcu.mmu_gather",
    "full-rcu": "impls.pt_reclaim.mmu_gather",
}
PLATFORM_MODULES = {
    "native": "impls.platforms.native",
    "xen-pv": "impls.platforms.xen_pv",
    "broadcast": "impls.platforms.broadcast",
    "arm64": "impls.platforms.arm64",
}
STRATEGIES = tuple(STRATEGY_MODULES)
PLATFORMS = tuple(PLATFORM_MODULES)

_cache: dict[tuple[str, str], Ops] = {}


def _import(modname: str):
    import importlib
    return importlib.import_module(modname)


def strategy(name: str) -> Ops:
    """A built-in strategy by name, or a strategy file by path."""
    key = ("strategy", name)
    if key not in _cache:
        if name in STRATEGY_MODULES:
            _cache[key] = load_strategy_module(_import(STRATEGY_MODULES[name]))
        elif name.endswith(".py") or Path(name).exists():
            _cache[key] = load_strategy_file(name)
        else:
            raise PluginError(f"unknown strategy {name!r} (built-ins: {', '.join(STRATEGIES)}; "
                              "or a path to a strategy file)")
    return _cache[key]


def platform(name: str) -> Ops:
    """A built-in platform by name, or a platform file by path."""
    key = ("platform", name)
    if key not in _cache:
        if name in PLATFORM_MODULES:
            _cache[key] = load_platform_module(_import(PLATFORM_MODULES[name]))
        elif name.endswith(".py") or Path(name).exists():
            _cache[key] = load_platform_file(name)
        else:
            raise PluginError(f"unknown platform {name!r} (built-ins: {', '.join(PLATFORMS)}; "
                              "or a path to a platform file)")
    return _cache[key]
