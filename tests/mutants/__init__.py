"""Planted bugs: deliberately broken strategies and platforms, each a small
change to a correct one, mirroring a bug or near-miss from kernel history.
Never in the registry; loaded by path like a user's file.

Each file declares, next to ``NAME``::

    PLANTED = {"env": "<environment where it is unsafe>",
               "kind": "strategy" | "platform",
               "check": "<the check expected to catch it>",
               # optional:
               "also": ("<further checks that catch it>", ...),
               "strategy": "<the correct strategy a platform mutant runs with>"}

:func:`discover` finds them (the tests of tests/test_zoo.py and
bench/detection.py use it); :func:`setup` turns one into what the fuzz loop
needs.  ``PLANTED`` is read with ``ast.literal_eval``, so discovering the zoo
imports nothing.  Files named ``oracle_*.py`` belong to the oracle tests and
are skipped unless asked for; ``_*.py`` are helpers.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: the correct strategy a platform mutant runs with when it names none, and
#: the reference a strategy mutant is compared with for the divergence check
REFERENCE_STRATEGY = "full-rcu"

KINDS = ("strategy", "platform")


@dataclass(frozen=True)
class Mutant:
    name: str                  # the file's stem: the bug's name (test ids)
    path: Path
    planted: dict[str, Any] = field(hash=False, compare=False)

    @property
    def env(self) -> str:
        return self.planted["env"]

    @property
    def kind(self) -> str:
        return self.planted["kind"]

    @property
    def check(self) -> str:
        return self.planted["check"]

    @property
    def also(self) -> tuple[str, ...]:
        return tuple(self.planted.get("also", ()))

    @property
    def checks(self) -> tuple[str, ...]:
        """Every check this mutant is expected to trip, the primary one first."""
        return (self.check, *self.also)

    @property
    def strategy(self) -> str:
        return self.planted.get("strategy", REFERENCE_STRATEGY)

    @property
    def doc(self) -> str:
        tree = ast.parse(self.path.read_text())
        return ast.get_docstring(tree) or ""

    @property
    def summary(self) -> str:
        """The first sentence of the docstring, without "Planted bug: "."""
        first = " ".join(self.doc.split("\n\n")[0].split())
        return first.removeprefix("Planted bug: ")


def _planted(path: Path) -> dict[str, Any] | None:
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PLANTED"
                                                for t in node.targets):
            value = ast.literal_eval(node.value)
            if not isinstance(value, dict):
                raise ValueError(f"{path}: PLANTED must be a dict")
            return value
    return None


def discover(include_oracle: bool = False) -> list[Mutant]:
    """Every planted bug of this directory, sorted by name."""
    out = []
    for p in sorted(HERE.glob("*.py")):
        if p.name.startswith("_") or (p.name.startswith("oracle_") and not include_oracle):
            continue
        planted = _planted(p)
        if planted is None:
            continue
        for key in ("env", "kind", "check"):
            if key not in planted:
                raise ValueError(f"{p}: PLANTED lacks {key!r}")
        if planted["kind"] not in KINDS:
            raise ValueError(f"{p}: PLANTED kind must be one of {KINDS}")
        out.append(Mutant(p.stem, p, planted))
    return out


def by_name(name: str) -> Mutant:
    for m in discover(include_oracle=True):
        if m.name == name:
            return m
    raise KeyError(f"no planted bug named {name!r}")


# -- environments ------------------------------------------------------------------

def _extra_environments() -> dict:
    """Environments some planted bugs need beyond fuzz/envs.py (none now:
    native+secondary-mmu moved there)."""
    return {}


def environment(name: str):
    from fuzz.envs import ENVIRONMENTS
    if name in ENVIRONMENTS:
        return ENVIRONMENTS[name]
    extra = _extra_environments()
    if name in extra:
        return extra[name]
    raise KeyError(f"unknown environment {name!r}")


# -- what the fuzz loop needs -------------------------------------------------------

@dataclass
class Setup:
    """A planted bug ready to fuzz: the strategies to run in lockstep (the
    mutant, or the correct strategy a platform mutant runs with; with
    ``divergence`` a correct reference first), the platform and the
    environment.  ``target`` is the strategy name whose verdict counts."""

    mutant: Mutant
    strategies: list
    platform: Any
    env: Any
    target: str


def setup(m: Mutant, differential: bool | None = None) -> Setup:
    """``differential`` (default: when the mutant's checks include
    ``divergence``) runs a correct reference strategy alongside."""
    from impls import registry
    env = environment(m.env)
    if differential is None:
        differential = "divergence" in m.checks
    if m.kind == "strategy":
        target = registry.strategy(str(m.path))
        strategies = [target]
        platform = registry.platform(env.platform)
    else:
        target = registry.strategy(m.strategy)
        strategies = [target]
        platform = registry.platform(str(m.path))
        env = env.on_platform(str(m.path))
    if differential:
        strategies = [registry.strategy(REFERENCE_STRATEGY), *strategies] \
            if target.name != REFERENCE_STRATEGY else [registry.strategy("semi-rcu"), *strategies]
    return Setup(m, strategies, platform, env, target.name)
