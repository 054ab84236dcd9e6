"""mremap (mm/mremap.c): whole PTE tables move with move_normal_pmd(), single
PTEs with move_ptes(), each flushed before its locks are dropped; the old
range is unmapped afterwards and its emptied tables freed through the
strategy.  Walkers, faults and zaps (an rmap zap among them) race with it."""

from __future__ import annotations

from pathlib import Path

from fuzz import corpus
from fuzz.run import run_lockstep, run_program
from impls import registry

ROOT = Path(__file__).resolve().parent.parent

MOVE = """
shootdown: 1
cpus: 2
vmas:
  - {mm: 0, start: 0x200000, len: 0x200000}
setup:
  - {cpu: 0, op: access, addr: 0x200000, write: true}
  - {cpu: 0, op: access, addr: 0x202000, write: true}
  - {cpu: 1, op: access, addr: 0x202000}
ops:
  - {cpu: 0, op: mremap, addr: 0x200000, len: 0x200000, new_addr: NEW}
  - {cpu: 1, op: access, addr: NEWPLUS}
"""


def _run(src: str, strategy: str = "direct", platform: str = "native"):
    p = corpus.parse(src, "<test>").program
    return run_program(p, registry.strategy(strategy), registry.platform(platform))


def _final_mapping(r, mm: int = 0) -> dict[int, tuple[int, int]]:
    return dict(r.history.events[-1].a["mms"][mm]["mapping"])


def test_a_pmd_aligned_move_repoints_the_whole_pte_table():
    r = _run(MOVE.replace("NEWPLUS", "0x40002000").replace("NEW", "0x40000000"))
    assert r.verdict.checks() == []
    ev = r.history.events
    moved = [e for e in ev if e.kind == "table_moved"]
    assert len(moved) == 1 and moved[0].a["level"] == 1
    table = moved[0].a["pfn"]
    assert not any(e.kind == "free" and e.a["pfn"] == table for e in ev)  # moved, not freed
    assert not any(e.kind == "ptes_moved" for e in ev)
    before = {e.a["va"]: e.a["pfn"] for e in ev if e.kind == "tlb_fill" and e.cpu == 0}
    after = _final_mapping(r)
    assert sorted(after) == [0x40000000, 0x40002000]
    assert after[0x40000000][0] == before[0x200000] and after[0x40002000][0] == before[0x202000]
    # the flush of the old range came with freed_tables: CPU1's PSC entry for it goes
    flush = next(e for e in ev if e.kind == "flush_begin" and e.seq > moved[0].seq)
    assert flush.a["freed_tables"]


def test_an_unaligned_move_moves_ptes_and_flushes_before_unlocking():
    r = _run(MOVE.replace("NEWPLUS", "0x40003000").replace("NEW", "0x40001000"))
    assert r.verdict.checks() == []
    ev = r.history.events
    assert not any(e.kind == "table_moved" for e in ev)
    moved = [e for e in ev if e.kind == "ptes_moved"]
    assert [e.a["n"] for e in moved] == [2]
    # CPU1 still had the old translation when the PTEs moved
    assert r.verdict.behaviours.get("moved-pte-cached-at-old-address") == 1
    assert sorted(_final_mapping(r)) == [0x40001000, 0x40003000]


def test_litmus_mremap_rmap_zap_waits_for_the_flushed_move():
    lit = corpus.load(ROOT / "corpus" / "mremap+truncate+rmapzap.yaml")
    r = run_program(lit.program, registry.strategy("direct"), registry.platform("native"))
    ev = r.history.events
    moved = next(e for e in ev if e.kind == "ptes_moved")
    flush_end = next(e for e in ev if e.kind == "flush_end" and e.seq > moved.seq and e.cpu == 0)
    zaps = [e for e in ev if e.kind == "entry_write" and e.cpu == 2 and e.a["new"] == 0]
    # the rmap zap cleared the moved PTE only after move_ptes() had flushed the old range
    assert zaps and all(z.seq > flush_end.seq for z in zaps)
    free = next(e for e in ev if e.kind == "free" and e.a["via"].startswith("shmem_undo_range"))
    assert free.seq > flush_end.seq
    results = [e.a["result"] for e in ev if e.kind == "op_end" and e.cpu == 1 and e.a["op"] >= 0]
    assert results[0] == "SIGSEGV"  # the old address is gone, not translated stale


def test_the_mremap_litmus_files_reach_their_race():
    for name, behaviour in (("mremap+truncate+rmapzap.yaml", "moved-pte-cached-at-old-address"),
                            ("mremap+truncate+rmapzap.yaml", "rmap-zap-foreign-mm")):
        lit = corpus.load(ROOT / "corpus" / name)
        for s in registry.STRATEGIES:
            r = run_program(lit.program, registry.strategy(s), registry.platform(lit.program.platform))
            assert r.verdict.behaviours.get(behaviour), (name, s, behaviour)


def test_no_false_divergence_when_mremap_moves_what_another_cpu_faulted():
    """Generated native+file program (seed 50): CPU2 mremaps a file VMA of mm1
    while CPUs fault on both ends; what the new range maps depends on what the
    old one held when the move ran, so its pages are not schedule-robust."""
    from fuzz.engine import make_choices
    from fuzz.envs import ENVIRONMENTS
    from fuzz.generate import RandomDraw, generate
    env = ENVIRONMENTS["native+file"]
    strategies = [registry.strategy(n) for n in registry.STRATEGIES]
    for seed in (50,):
        p = generate(RandomDraw(seed), env.gen_config(32))
        assert any(op.kind == "mremap" for op in p.ops)
        res = run_lockstep(p, strategies, registry.platform(env.platform),
                           lambda p=p, seed=seed: make_choices("random", seed, env, p, 160))
        assert res.divergences == [], [d.summary for d in res.divergences]
