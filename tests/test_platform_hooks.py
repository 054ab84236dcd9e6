"""The platform decides how the gather's flags become invalidations: the arch
``tlb_flush()`` and ``tlb_needs_table_invalidate()`` are platform hooks, with
x86's behaviour as default, and the strategies reach them through the kernel
API (``impls.machine.kernel``)."""

from __future__ import annotations

from pathlib import Path

from fuzz.run import run_lockstep
from impls import registry
from impls.machine import mmu_gather
from impls.machine.choices import SchedEntry, Schedule
from impls.machine.program import Op, Program

ROOT = Path(__file__).resolve().parent.parent

#: CPU1 caches the PTE table, goes lazy; CPU0 unmaps with every table-batch
#: allocation failing (the single-table path); CPU1 then walks speculatively
LAZY_BATCHFAIL = Program(
    cpus=2, vmas=((0, 0x200000, 0x200000),),
    setup=(Op(1, "access", addr=0x200000, write=True), Op(1, "switch", mm=None)),
    ops=(Op(0, "munmap", addr=0x200000, len=0x200000), Op(1, "spec_walk", addr=0x200000)),
    schedule=Schedule((SchedEntry(0, until="op_end"), SchedEntry(1, until="op_end")),
                      (("alloc_fails:mmu_table_batch", (True,)),)),
)


def verdicts(program, platform, strategies=("direct", "semi-rcu", "full-rcu")):
    res = run_lockstep(program, [registry.strategy(s) for s in strategies], platform)
    return {r.verdict.strategy: sorted(r.verdict.checks()) for r in res.runs}


def test_default_hooks_are_x86():
    p = registry.platform("native")
    assert p.tlb_flush.__wrapped__ is mmu_gather.x86_tlb_flush if hasattr(p.tlb_flush, "__wrapped__") \
        else p.tlb_flush is mmu_gather.x86_tlb_flush
    assert p.tlb_needs_table_invalidate() is True


def test_table_flags_are_read_by_name():
    """A gather flag of TABLE_FLAGS (the hugetlb unshared-tables flag included)
    makes the flush a walk-cache flush, whoever added it to the gather."""
    class Gather:
        freed_tables = False

    g = Gather()
    assert not mmu_gather.tlb_tables_changed(g)
    g.unshared_tables = True
    assert mmu_gather.tlb_tables_changed(g)
    g.unshared_tables, g.freed_tables = False, True
    assert mmu_gather.tlb_tables_changed(g)


def test_platform_without_table_invalidate_skips_the_flush(tmp_path: Path):
    """A platform that says its hardware does not walk the Linux tables
    (sparc64, powerpc hash) makes the RCU strategies hand a table to its free
    path without the paging-structure flush.  On x86 hardware that is
    stale-psc for semi-RCU's single-table path, which frees at once after its
    sync IPI; full RCU's table waits a grace period, which outlasts the final
    freed_tables flush of tlb_finish_mmu()."""
    f = tmp_path / "nowalk.py"
    f.write_text('"""native, claiming tlb_needs_table_invalidate() is false."""\n'
                 "from impls.platforms.native import flush_tlb_multi, IMPLIES_IPI_BROADCAST  # noqa: F401\n"
                 'NAME = "native-nowalk"\n\n\n'
                 "def tlb_needs_table_invalidate():\n    return False\n")
    assert verdicts(LAZY_BATCHFAIL, registry.platform("native")) == {
        "direct": [], "semi-rcu": [], "full-rcu": []}
    got = verdicts(LAZY_BATCHFAIL, registry.platform(str(f)))
    assert got["direct"] == []  # no table batch: the table waits for the flush in the page batch
    assert "stale-psc" in got["semi-rcu"]
    assert got["full-rcu"] == []
