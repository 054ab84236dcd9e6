"""The documented plug-in examples work, and the documentation matches the code.

* ``docs/examples/skip_sync_ipi.py`` (a strategy) and ``docs/examples/rar.py``
  (a platform) load through the loaders the command line uses
  (``impls.registry.strategy(path)`` / ``.platform(path)``), implement their
  protocols, and give the verdicts docs/writing-a-strategy.md states;
* every code block of docs/writing-a-strategy.md marked
  ``# complete strategy file: NAME.py`` / ``# complete platform file: NAME.py``
  loads and behaves as the text says;
* the reference tables of the two documents list exactly the hooks, labels,
  operations, keys and environments the code has.
"""

from __future__ import annotations

import ast
import copy
import inspect
import re
from pathlib import Path

import pytest

from fuzz import corpus
from fuzz.envs import ENVIRONMENTS
from fuzz.run import run_lockstep, run_program
from impls import registry
from impls.machine import gup, mmu_gather, plugin
from impls.machine.choices import FLIP_LABELS
from impls.machine.platform import HOOKS as PLATFORM_HOOKS
from impls.machine.program import OP_KINDS, Env, Op, Program
from impls.machine.strategy import HOOKS as STRATEGY_HOOKS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP = str(DOCS / "examples" / "skip_sync_ipi.py")
RAR = str(DOCS / "examples" / "rar.py")
RADIX = str(DOCS / "examples" / "radix.py")
EXAMPLES = ROOT / "corpus" / "examples"
STRATEGY_DOC = DOCS / "writing-a-strategy.md"
FORMAT_DOC = DOCS / "litmus-format.md"
BUILTINS = ("direct", "semi-rcu", "full-rcu")


# -- helpers ------------------------------------------------------------------------

def verdicts(program, strategies, platform) -> dict[str, list[str]]:
    res = run_lockstep(program, [registry.strategy(s) for s in strategies], platform)
    for r in res.runs:
        assert r.verdict.outcome == "quiescent", (r.verdict.strategy, r.verdict.outcome)
    return {r.verdict.strategy: sorted(r.verdict.checks()) for r in res.runs}


def history(program, strategy, platform):
    r = run_program(program, registry.strategy(strategy), platform)
    assert r.history.meta["outcome"] == "quiescent"
    return r.history.events


def lying(platform_name: str):
    """The platform, claiming its flush is a synchronous IPI broadcast."""
    p = copy.copy(registry.platform(platform_name))
    p.meta = dict(p.meta, implies_ipi_broadcast=True)
    return p


def sync_ipis(events) -> list:
    return [e for e in events if e.kind == "ipi_send" and e.a["what"] == "tlb_remove_table_sync_one"]


def first(events, pred) -> int:
    return next(e.seq for e in events if pred(e))


BATCHFAIL = corpus.load(EXAMPLES / "skip-sync-ipi+gupfast+munmap+batchfail.yaml").program
OTHERMM = corpus.load(EXAMPLES / "skip-sync-ipi+gupfast+munmap+batchfail+othermm.yaml").program
GUP_RAR = corpus.load(EXAMPLES / "gupfast+munmap+rar.yaml").program
LAZY_RAR = corpus.load(EXAMPLES / "lazytlb+munmap+rar.yaml").program
GUP_RADIX = corpus.load(EXAMPLES / "gupfast+munmap+radix.yaml").program
PTEWALK_BATCHFAIL = corpus.load(ROOT / "corpus" / "ptewalk+madvise+ptreclaim+batchfail.yaml").program


# -- the strategy example ----------------------------------------------------------

def test_skip_sync_ipi_implements_the_strategy_protocol():
    ops = registry.strategy(SKIP)
    assert ops.name == "skip-sync-ipi"
    assert ops.meta["kernel"]
    assert "tlb_table_flush_implies_ipi_broadcast" in ops.doc
    for hook in STRATEGY_HOOKS:
        fn = getattr(ops, hook.name)
        if hook.required:
            assert callable(fn), hook.name
        if fn is not None and hook.generator:
            assert plugin.is_generator_function(fn), hook.name
    # the optional hooks it leaves out fall back to the machine's
    assert ops.tlb_finish_mmu is mmu_gather.tlb_finish_mmu
    assert ops.gup_fast is gup.gup_fast
    assert set(ops.meta["safe_on"]) <= set(ENVIRONMENTS)
    assert ops.meta["safe_on"] == registry.strategy("semi-rcu").meta["safe_on"]


def test_skip_sync_ipi_imports_only_the_machine():
    """Written independently: no other strategy (nor a platform) is imported."""
    tree = ast.parse(Path(SKIP).read_text())
    mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert mods and all(m == "__future__" or m.startswith("impls.machine") for m in mods), mods


def test_skip_sync_ipi_skips_the_ipi_on_native_only():
    """On native the freed_tables flush was the IPI: no second one.  Where the
    platform does not say so, the sync IPI is sent, as in semi-RCU."""
    skip = history(BATCHFAIL, SKIP, registry.platform("native"))
    semi = history(BATCHFAIL, "semi-rcu", registry.platform("native"))
    assert any(e.kind == "alloc_fail" for e in skip)
    assert sync_ipis(skip) == [] and len(sync_ipis(semi)) == 1
    for plat in ("xen-pv", "broadcast", RAR):
        assert len(sync_ipis(history(BATCHFAIL, SKIP, registry.platform(plat)))) == 1, plat


@pytest.mark.parametrize("plat", ["native", "xen-pv", "broadcast", RAR])
def test_skip_sync_ipi_is_safe_against_gup_fast_when_the_batch_fails(plat):
    got = verdicts(BATCHFAIL, [*BUILTINS, SKIP], registry.platform(plat))
    assert got["skip-sync-ipi"] == [] and got["semi-rcu"] == [] and got["full-rcu"] == []
    assert got["direct"] == ([] if plat == "native" else ["table-uaf"])


@pytest.mark.parametrize("plat", ["xen-pv", "broadcast", RAR])
def test_a_platform_falsely_claiming_an_ipi_broadcast_breaks_the_skip(plat):
    """IMPLIES_IPI_BROADCAST is what makes the early return safe: claim it for
    a flush that is not an IPI and the table is freed under GUP-fast."""
    got = verdicts(BATCHFAIL, [SKIP, "semi-rcu"], lying(plat))
    assert got == {"skip-sync-ipi": ["table-uaf"], "semi-rcu": []}


def test_skip_sync_ipi_does_not_wait_for_walkers_of_other_mms():
    """The flush IPI reaches mm_cpumask only; the skipped sync IPI reached every
    online CPU.  CPU2 walks another mm: semi-RCU waits for it, skip-sync-ipi
    frees (and the frame is reused) while it walks, and both are safe."""
    plat = registry.platform("native")
    assert verdicts(OTHERMM, [*BUILTINS, SKIP], plat) == {s: [] for s in (*BUILTINS, "skip-sync-ipi")}
    for strategy, before in ((SKIP, True), ("semi-rcu", False)):
        ev = history(OTHERMM, strategy, plat)
        freed = first(ev, lambda e: e.kind == "free" and e.a["via"] == "__tlb_remove_table")
        cpu2_done = first(ev, lambda e: e.cpu == 2 and e.kind == "op_end" and e.a["name"] == "gup_fast")
        assert (freed < cpu2_done) == before, strategy


def test_skip_sync_ipi_is_unsafe_for_rcu_only_walkers_like_semi_rcu():
    """native+pt-reclaim+batch-fail is not in SAFE_ON: no IPI holds off an
    rcu_read_lock() walker."""
    got = verdicts(PTEWALK_BATCHFAIL, ["semi-rcu", "full-rcu", SKIP], registry.platform("native"))
    assert got == {"semi-rcu": ["table-uaf"], "full-rcu": [], "skip-sync-ipi": ["table-uaf"]}
    assert "native+pt-reclaim+batch-fail" not in registry.strategy(SKIP).meta["safe_on"]


# -- the platform example ------------------------------------------------------------

def test_rar_implements_the_platform_protocol():
    ops = registry.platform(RAR)
    assert ops.name == "rar"
    assert ops.meta["implies_ipi_broadcast"] is False
    assert plugin.is_generator_function(ops.flush_tlb_multi)
    for name in ("init", "on_step", "pending", "quiesce"):
        assert callable(getattr(ops, name)), name
    assert ops.mm_global_asid is None and ops.broadcast_tlb_flush is None
    assert "Remote Action Request" in ops.doc


def test_rar_direct_free_is_a_gup_fast_uaf_rcu_is_safe():
    got = verdicts(GUP_RAR, [*BUILTINS, SKIP], registry.platform(RAR))
    assert got == {"direct": ["table-uaf"], "semi-rcu": [], "full-rcu": [], "skip-sync-ipi": []}


def test_rar_flush_is_hardware_serviced_and_synchronous():
    """No IPI is sent for the flush; the target is invalidated while it has IRQs
    off (inside GUP-fast); every request completes before the flush returns."""
    ev = history(GUP_RAR, "direct", registry.platform(RAR))
    assert not [e for e in ev if e.kind == "ipi_send"]
    sends = [e for e in ev if e.kind == "rar_send"]
    assert sends and all(e.a["freed_tables"] for e in sends)
    for s in sends:
        done = first(ev, lambda e, s=s: e.kind == "rar_complete" and e.a["id"] == s.a["id"])
        end = first(ev, lambda e, s=s: e.kind == "flush_end" and e.a["id"] == s.a["id"])
        assert s.seq < done < end
        inv = [e for e in ev if e.cpu == 1 and e.kind in ("tlb_inv", "tlb_inv_all")
               and e.a["why"] == f"rar {s.a['id']}"]
        assert inv and s.seq < inv[0].seq < done
    # CPU1 was inside its IRQ-off walk when the invalidation landed
    gup_begin = first(ev, lambda e: e.cpu == 1 and e.kind == "op_begin" and e.a["name"] == "gup_fast")
    gup_end = first(ev, lambda e: e.cpu == 1 and e.kind == "op_end" and e.a["name"] == "gup_fast")
    assert gup_begin < sends[0].seq < gup_end


def test_rar_reaches_lazy_cpus_in_microcode():
    """The lazy CPU's caches are invalidated by the request; it stays lazy on
    the mm (no flush_tlb_func(), no switch to init_mm); every strategy is S."""
    got = verdicts(LAZY_RAR, [*BUILTINS, SKIP], registry.platform(RAR))
    assert got == {s: [] for s in (*BUILTINS, "skip-sync-ipi")}
    ev = history(LAZY_RAR, "direct", registry.platform(RAR))
    assert [e for e in ev if e.cpu == 1 and e.kind == "rar_done" and e.a["effect"] == "invalidated"]
    concurrent = first(ev, lambda e: e.kind == "phase")
    assert not [e for e in ev if e.seq > concurrent and e.cpu == 1 and e.kind == "switch_mm"]


def test_rar_without_the_lazy_target_would_be_caught():
    """Guard for the example: if RAR skipped lazy CPUs, the oracle would see it."""
    ops = copy.copy(registry.platform(RAR))
    mod = inspect.getmodule(ops.on_step)

    def flush_tlb_multi(cpu, cpumask, info):
        mask = cpumask & ~sum(1 << c.id for c in cpu.m.cpus if c.is_lazy)
        yield from mod.flush_tlb_multi(cpu, mask, info)

    ops.flush_tlb_multi = flush_tlb_multi
    got = verdicts(LAZY_RAR, ["full-rcu"], ops)
    assert "ordering" in got["full-rcu"]


# -- the powerpc radix platform ---------------------------------------------------------

def test_radix_implements_the_platform_hooks_for_gather_flags():
    ops = registry.platform(RADIX)
    assert ops.name == "powerpc-radix" and ops.meta["implies_ipi_broadcast"] is False
    assert ops.tlb_needs_table_invalidate() is True  # radix_enabled()
    assert "page-walk cache" in ops.doc
    for name in ("tlb_flush", "switch_mm_irqs_off", "broadcast_tlb_flush"):
        assert plugin.is_generator_function(getattr(ops, name)), name


def test_radix_direct_free_is_a_gup_fast_uaf_rcu_is_safe():
    got = verdicts(GUP_RADIX, [*BUILTINS, SKIP], registry.platform(RADIX))
    assert got == {"direct": ["table-uaf"], "semi-rcu": [], "full-rcu": [], "skip-sync-ipi": []}


def test_radix_flushes_the_pwc_only_when_tables_are_freed():
    """radix__tlb_flush(): RIC_FLUSH_TLB (leaf entries, the PWC stays) for a
    zap, the PID's PWC too (also_pwc) when the gather freed tables; a PID is
    loaded without a flush."""
    ev = history(GUP_RADIX, "full-rcu", registry.platform(RADIX))
    tlbies = [e.a["ric"] for e in ev if e.kind == "tlbie"]
    assert tlbies and set(tlbies) <= {1, 2}  # munmap frees the PTE table: PWC or ALL
    assert all(not e.a["flush"] for e in ev if e.kind == "cr3_load")
    madvise = Program(cpus=2, vmas=((0, 0x200000, 0x200000),),
                      setup=(Op(1, "access", addr=0x200000, write=True),),
                      ops=(Op(0, "madvise", addr=0x200000, len=0x200000),))
    ev = history(madvise, "full-rcu", registry.platform(RADIX))
    assert [e.a["ric"] for e in ev if e.kind == "tlbie"] == [0]
    assert all(e.a["psc"] is False for e in ev if e.kind == "tlb_inv" and e.a["why"].startswith("tlbie"))


def test_radix_without_the_pwc_flush_would_be_caught():
    """Guard for the example: a tlb_flush() that never flushes the PWC leaves
    CPU1's cached pointer to the freed table (stale-psc)."""
    ops = copy.copy(registry.platform(RADIX))
    mod = inspect.getmodule(ops.tlb_needs_table_invalidate)

    def tlb_flush(tlb):
        mod.__radix__flush_tlb_range_psize(tlb.cpu, tlb.mm, tlb.start, tlb.end, False)
        return
        yield

    ops.tlb_flush = tlb_flush
    lazy = Program(cpus=2, vmas=((0, 0x200000, 0x200000),),
                   setup=(Op(1, "access", addr=0x200000, write=True), Op(1, "switch", mm=None)),
                   ops=(Op(0, "munmap", addr=0x200000, len=0x200000), Op(1, "spec_walk", addr=0x200000)))
    assert verdicts(lazy, ["full-rcu"], registry.platform(RADIX)) == {"full-rcu": []}
    assert "stale-psc" in verdicts(lazy, ["full-rcu"], ops)["full-rcu"]


def test_examples_replay_deterministically():
    for program, plat in ((OTHERMM, "native"), (GUP_RAR, RAR)):
        a = history(program, SKIP, registry.platform(plat))
        b = history(program, SKIP, registry.platform(plat))
        assert [(e.cpu, e.kind, e.a) for e in a] == [(e.cpu, e.kind, e.a) for e in b]


# -- complete files in docs/writing-a-strategy.md --------------------------------------

COMPLETE = re.compile(r"```python\n(# complete (strategy|platform) file: (\S+)\n.*?)```", re.S)


def complete_blocks() -> list[tuple[str, str, str]]:
    return [(kind, name, text) for text, kind, name in COMPLETE.findall(STRATEGY_DOC.read_text())]


def test_the_guide_has_complete_files_of_both_kinds():
    kinds = [k for k, _, _ in complete_blocks()]
    assert "strategy" in kinds and "platform" in kinds


@pytest.mark.parametrize("kind,name,text", complete_blocks(), ids=[n for _, n, _ in complete_blocks()])
def test_complete_file_in_the_guide_loads(tmp_path, kind, name, text):
    path = tmp_path / name
    path.write_text(text)
    ops = registry.strategy(str(path)) if kind == "strategy" else registry.platform(str(path))
    assert ops.kind == kind and ops.name


def _guide_file(tmp_path, name: str) -> str:
    for _, n, text in complete_blocks():
        if n == name:
            path = tmp_path / n
            path.write_text(text)
            return str(path)
    raise AssertionError(f"{name} is no longer in {STRATEGY_DOC.name}")


def test_guide_sync_rcu_matches_full_rcu_on_the_corpus(tmp_path):
    """The text says: on every program of corpus/, the same verdict as full-rcu."""
    sync_rcu = _guide_file(tmp_path, "sync_rcu.py")
    files = corpus.litmus_files(ROOT / "corpus")
    assert len(files) >= 8
    for f in files:
        lit = corpus.load(f)
        got = verdicts(lit.program, ["full-rcu", sync_rcu], registry.platform(lit.program.platform))
        assert got["sync-rcu"] == got["full-rcu"], f.name


def test_guide_hyperflush_breaks_direct_free(tmp_path):
    hyper = _guide_file(tmp_path, "hyperflush.py")
    lit = corpus.load(ROOT / "corpus" / "gupfast+munmap+xenflush.yaml")
    assert verdicts(lit.program, BUILTINS, registry.platform(hyper)) == {
        "direct": ["table-uaf"], "semi-rcu": [], "full-rcu": []}


# -- the reference tables match the code ---------------------------------------------

def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = re.search(r"\n#{2,3} ", text[start + len(heading):])
    return text[start: start + len(heading) + (nxt.start() if nxt else len(text))]


def _first_cells(section: str) -> list[str]:
    """The backticked names in the first column of the section's tables."""
    out: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            out += re.findall(r"`([^`]+)`", line.split("|")[1])
    return out


def test_strategy_hook_tables_list_every_hook():
    text = _section(STRATEGY_DOC.read_text(), "### 4.1 Hooks")
    names = {c.split("(")[0] for c in _first_cells(text)}
    assert names == {h.name for h in STRATEGY_HOOKS}


def test_platform_hook_table_lists_every_hook():
    text = _section(STRATEGY_DOC.read_text(), "## 6. The platform protocol")
    names = {n for c in _first_cells(text) for n in c.split("(")[0].split("/")} | {"flush_tlb_multi"}
    assert names == {h.name for h in PLATFORM_HOOKS}


def test_environment_table_lists_every_environment():
    text = _section(STRATEGY_DOC.read_text(), "### 4.3 Module attributes")
    envs = [c for c in _first_cells(text) if c not in ("NAME", "SAFE_ON", "KERNEL")]
    assert sorted(envs) == sorted(ENVIRONMENTS)


def test_format_tables_match_the_reader():
    text = FORMAT_DOC.read_text()
    assert set(_first_cells(_section(text, "## Top-level keys"))) == corpus.TOP_KEYS
    ops = _section(text, "## Operations")
    assert set(_first_cells(ops)) == set(OP_KINDS)
    for line in ops.splitlines():
        m = re.match(r"\| `(\w+)` \| ([^|]*) \|", line)
        if m:
            args = tuple(re.findall(r"`(\w+)`", m.group(2)))
            assert args == OP_KINDS[m.group(1)][0], m.group(1)
    assert set(_first_cells(_section(text, "### `env`"))) == set(Env.__slots__)
    assert set(_first_cells(_section(text, "## `choices`"))) == set(FLIP_LABELS)


def _label_patterns() -> list[re.Pattern]:
    """Every string literal of the model and the examples, f-strings as
    patterns: the labels code can yield."""
    pats: list[re.Pattern] = []
    files = [*(ROOT / "impls").rglob("*.py"), *(DOCS / "examples").glob("*.py")]
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                pats.append(re.compile(re.escape(node.value)))
            elif isinstance(node, ast.JoinedStr):
                parts = [re.escape(v.value) if isinstance(v, ast.Constant) else r"[A-Za-z0-9_]+"
                         for v in node.values]
                pats.append(re.compile("".join(parts)))
    return pats


def test_documented_labels_exist_in_the_model():
    labels = _first_cells(_section(FORMAT_DOC.read_text(), "### Preemption-point labels"))
    assert "op_end" in labels and "gup_fast:pmd_read" in labels
    pats = _label_patterns()
    missing = [lab for lab in labels if not any(p.fullmatch(lab) for p in pats)]
    assert not missing, f"labels documented in {FORMAT_DOC.name} but not in impls/: {missing}"


def test_paths_named_in_the_docs_exist():
    for doc in (STRATEGY_DOC, FORMAT_DOC):
        for p in re.findall(r"`((?:corpus|docs|tests|impls|fuzz)/[\w+./-]+\.(?:yaml|py|md))`", doc.read_text()):
            if "*" not in p:
                assert (ROOT / p).exists(), f"{doc.name} names {p}"
