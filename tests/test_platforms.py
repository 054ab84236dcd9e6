"""The platforms as the kernel and the hypervisor have them: x86 PCIDs and
the switch window (impls/machine/tlbflush.py), the platform options, Xen's
TLB-flush clock (impls/platforms/xen_pv.py).  The corpus files named here
show the same mechanisms end to end."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from fuzz import corpus
from fuzz.run import run_program
from impls import registry
from impls.machine.choices import RandomChoices
from impls.machine.platform import platform_options
from impls.machine.program import Env, Op, Program
from impls.platforms import xen_pv

#: CPU1 ran mm0, switched to mm1 and back; CPU0 zaps the page in between
SWITCH_BACK = Program(
    cpus=2, mms=2, start=(0, 0), vmas=((0, 0x200000, 0x200000), (1, 0x200000, 0x200000)),
    setup=(Op(1, "access", addr=0x200000, write=True), Op(1, "switch", mm=1)),
    ops=(Op(0, "madvise", addr=0x200000, len=0x200000), Op(1, "switch", mm=0), Op(1, "access", addr=0x200000)),
)


def cr3_loads(program, platform="native"):
    r = run_program(program, registry.strategy("full-rcu"), registry.platform(platform))
    assert r.history.meta["outcome"] == "quiescent"
    return [(e.cpu, e.a["mm"], e.a["asid"], e.a["flush"]) for e in r.history.events if e.kind == "cr3_load"]


def test_pcid_keeps_an_asid_per_mm_and_catches_up_through_tlb_gen():
    loads = [x for x in cr3_loads(SWITCH_BACK) if x[0] == 1]
    # boot: mm0 in a new ASID (flushed); mm1 in another; back to mm0's ASID, flushed because
    # the madvise flush that skipped CPU1 moved mm0's tlb_gen
    assert loads == [(1, 0, 1, True), (1, 1, 2, True), (1, 0, 1, True)]


def test_pcid_reloads_without_a_flush_when_nothing_changed():
    quiet = replace(SWITCH_BACK, ops=(Op(1, "switch", mm=0), Op(1, "access", addr=0x200000)))
    assert [x for x in cr3_loads(quiet) if x[0] == 1][-1] == (1, 0, 1, False)


def test_without_pcid_every_cr3_write_flushes_asid_0():
    off = replace(SWITCH_BACK, env=Env(options=(("pcid", "off"),)))
    assert {(asid, flush) for _, _, asid, flush in cr3_loads(off)} == {(0, True)}
    assert {(asid, flush) for _, _, asid, flush in cr3_loads(SWITCH_BACK, "xen-pv")} == {(0, True)}


def test_options_are_checked_against_the_platform():
    native = registry.platform("native")
    assert platform_options(native, Env()) == {"pcid": "on", "invlpg": "amd-tce"}
    assert platform_options(native, Env(options=(("invlpg", "intel"),)))["invlpg"] == "intel"
    with pytest.raises(ValueError, match="no option 'moon'"):
        platform_options(native, Env(options=(("moon", "on"),)))
    with pytest.raises(ValueError, match="must be one of"):
        platform_options(native, Env(options=(("pcid", "maybe"),)))
    text = ("shootdown: 1\nplatform: native\ncpus: 1\nenv: {options: {moon: on}}\n"
            "ops: [{cpu: 0, op: spec_walk, addr: 0x200000}]\n")
    with pytest.raises(corpus.CorpusError, match="no option 'moon'"):
        corpus.parse(text)


def test_intel_invlpg_drops_every_paging_structure_entry():
    """SDM 4.10.4.1: INVLPG invalidates all paging-structure-cache entries of
    the current PCID; AMD with TCE only those on the address's path."""
    prog = Program(cpus=2, vmas=((0, 0x200000, 0x200000), (0, 0x40000000, 0x200000)),
                   setup=(Op(1, "access", addr=0x200000, write=True), Op(1, "access", addr=0x40000000)),
                   ops=(Op(0, "madvise", addr=0x200000, len=0x1000),))
    def psc_kinds(options):
        r = run_program(replace(prog, env=Env(options=options)), registry.strategy("full-rcu"),
                        registry.platform("native"))
        return {e.a["psc"] for e in r.history.events if e.kind == "tlb_inv" and e.cpu == 1}
    assert psc_kinds(()) == {True}
    assert psc_kinds((("invlpg", "intel"),)) == {"all"}


def test_xen_tlbflush_filter_skips_cpus_flushed_since_the_stamp():
    """asm/flushtlb.h: NEED_FLUSH(cpu_stamp, lastuse_stamp) keeps a CPU only
    if it has not flushed since the page stopped being used."""
    m = SimpleNamespace(pv={"tlbflush_clock": 10})
    a, b = SimpleNamespace(pv={"tlbflush_time": 3}), SimpleNamespace(pv={"tlbflush_time": 7})
    assert xen_pv.tlbflush_filter(m, [a, b], 5) == [a]
    assert xen_pv.tlbflush_filter(m, [a, b], 7) == [a, b]
    assert xen_pv.NEED_FLUSH(m, 3, 5) and not xen_pv.NEED_FLUSH(m, 6, 5)


def test_xen_flushes_every_vcpu_when_a_released_table_becomes_writable():
    lit = corpus.load("corpus/xen+unpin+typechange-flush.yaml")
    r = run_program(lit.program, registry.strategy("semi-rcu"), registry.platform("xen-pv"))
    flushes = [e for e in r.history.events if e.kind == "xen_type_change_flush"]
    assert flushes and set(flushes[0].a["cpus"]) == {0, 1}
    off = replace(lit.program, env=Env(options=(("type_change_flush", "off"),)))
    r = run_program(off, registry.strategy("semi-rcu"), registry.platform("xen-pv"))
    assert not [e for e in r.history.events if e.kind == "xen_type_change_flush"]


#: CPU1 switches to mm0 (a thread of mm0 is scheduled in) while CPU0's thread
#: of mm0 runs exit_group()
EXIT_WHILE_SWITCHING_IN = Program(
    cpus=2, mms=2, start=(0, 1), vmas=((0, 0x200000, 0x200000), (1, 0x200000, 0x200000)),
    ops=(Op(1, "switch", mm=0), Op(1, "access", addr=0x200000, write=True), Op(0, "exit")),
)


@pytest.mark.parametrize("platform", ["native", "xen-pv", "broadcast"])
def test_exit_kills_a_thread_being_switched_in(platform):
    """A task of mm0 being switched in holds an mm_users reference: exit_mmap()
    cannot run until it has exited too, so exit_group() must count it among
    the threads it kills even before CR3 holds mm0 (else it would fault pages
    into a tree exit_mmap() is tearing down: pages and tables leak).  Seed 12
    put the switch across the exit's zap before the fix."""
    for seed in range(40):
        r = run_program(EXIT_WHILE_SWITCHING_IN, registry.strategy("full-rcu"), registry.platform(platform),
                        RandomChoices(seed))
        assert r.verdict.ok, (seed, r.verdict.violations)
