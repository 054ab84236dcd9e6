"""Every YAML file under corpus/ is a regression test: replayed on each
strategy named in its `expect:` header, each verdict must match."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import corpus
from fuzz.run import run_lockstep
from impls import registry

ROOT = Path(__file__).resolve().parent.parent
FILES = corpus.litmus_files(ROOT / "corpus")


def test_corpus_is_not_empty():
    assert len(FILES) >= 8


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT / "corpus")))
def test_replay_matches_expected(path: Path):
    lit = corpus.load(path)
    assert lit.expect, f"{path.name} has no expect: header"
    strategies = [registry.strategy(corpus.resolve_expect_key(lit, n)) for n in lit.expect]
    res = run_lockstep(lit.program, strategies, registry.platform(lit.program.platform))
    got = {r.verdict.strategy: sorted(r.verdict.checks()) for r in res.runs}
    want = {s.name: lit.expected_checks(n) for s, n in zip(strategies, lit.expect, strict=True)}
    for r in res.runs:
        assert r.verdict.outcome == "quiescent", (path.name, r.verdict.strategy, r.verdict.outcome)
    assert got == want, "\n".join(f"{x.strategy}: {x.check}: {x.summary}"
                                  for r in res.runs for x in r.verdict.violations)


@pytest.mark.parametrize("name, behaviour", [
    ("gupfast+madvise+refault-aba+xen-pv.yaml", "gup-returned-refaulted-page"),
    ("gupfast+madvise+refault-aba+broadcast.yaml", "gup-returned-refaulted-page"),
    ("gupfast+pte-free+speculative-ref+xen-pv.yaml", "free-held-by-speculative-ref"),
])
def test_false_alarm_regressions_still_reach_their_race(name: str, behaviour: str):
    """The S of these files means something only if the race they were
    written for still happens: every strategy's run reaches it."""
    lit = corpus.load(ROOT / "corpus" / name)
    for s in ("semi-rcu", "full-rcu"):
        res = run_lockstep(lit.program, [registry.strategy(s)], registry.platform(lit.program.platform))
        assert res.runs[0].verdict.behaviours.get(behaviour), (name, s)
