"""Verdicts and violations, and the catalogue of checks with the paragraph
each one uses to explain itself (primer section 3.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from impls.machine.history import Event

#: check name -> (primer invariant, verdict word, one-paragraph explanation)
CHECKS: dict[str, tuple[str, str, str]] = {
    "stale-tlb": (
        "I3", "STALE-TLB",
        "A CPU translated through a leaf TLB entry for a page whose PTE had been cleared, "
        "and the page was freed or reused while that entry could still be used. Every CPU "
        "running the mm must have its TLB entry invalidated (and the invalidation completed) "
        "between clearing the PTE and freeing the page: unhook < invalidate < free "
        "(include/asm-generic/tlb.h).",
    ),
    "stale-psc": (
        "I1", "STALE-PSC",
        "A paging-structure-cache entry (or a CR3) still pointed at a page-table page after "
        "that page was freed; a hardware walk through it, speculative ones included and "
        "lazy-TLB CPUs included, reads whatever now occupies the frame. The freeing path "
        "must invalidate the paging-structure caches of every CPU that could hold the table "
        "before it is freed (freed_tables flush, b956575bed91, tlb_table_invalidate()).",
    ),
    "table-uaf": (
        "I2", "UAF-TABLE",
        "A software walker dereferenced a page-table page through a pointer it had read "
        "earlier, but the page had meanwhile been freed (and possibly reused). A lockless "
        "walker keeps a table alive only if the freeing side waits for it: an IPI it cannot "
        "take with IRQs off (native flush, tlb_remove_table_sync_one()), or an RCU grace "
        "period (tlb_remove_table(), PT_RECLAIM). Hypercall and broadcast flushes do not "
        "wait for IRQ-off walkers; an IPI does not wait for rcu_read_lock() walkers.",
    ),
    "leaked-gup-pin": (
        "I6", "LEAKED-GUP-PIN",
        "GUP-fast returned (or kept) a reference to a page that was not the page mapped at "
        "the address when the reference was taken, or never dropped a speculative "
        "reference. gup_fast_pte_range() must re-check the PMD and PTE after "
        "try_grab_folio_fast() and put the folio on any mismatch.",
    ),
    "leaked-xen-pin": (
        "I7", "LEAKED-XEN-PIN",
        "A Xen PV page-table page was freed while still pinned (PG_pinned, Xen's type/pin "
        "reference, or the read-only direct-map alias), or Xen refused to unpin a pgd that "
        "some vCPU's effective CR3 still used. Tables must be released "
        "(xen_release_ptpage()) and the hypercall issued before they are freed, and "
        "xen_drop_mm_ref() must move every vCPU whose xen_current_cr3 is the pgd off it "
        "before xen_pgd_unpin() (9f79991d4186).",
    ),
    "ordering": (
        "I4/I5", "ORDERING",
        "A page or page-table page was freed before an invalidation covering it had "
        "completed on every CPU that could cache it since it was unhooked: for a table, every "
        "CPU with the mm loaded in CR3 (lazy-TLB CPUs included); for a data page, every CPU "
        "running the mm. A flush that is still queued (Xen lazy mode), still in flight "
        "(INVLPGB before TLBSYNC) or that skipped a CPU does not count.",
    ),
    "accounting": (
        "I11", "ACCOUNTING",
        "At quiescence the books do not balance: a page-table page freed twice or while it "
        "still mapped pages, an unhooked table never freed, a page whose reference count "
        "does not match its mappings, RSS or nr_ptes counters that do not match the page "
        "tables, or RCU callbacks still pending.",
    ),
    "stale-secondary": (
        "I10", "STALE-SECONDARY",
        "A secondary MMU kept a translation (a KVM spte, an IOMMU IOTLB or paging-structure "
        "entry) to a page or table after it was freed. mmu_notifier_invalidate_range_start() "
        "must zap software secondary mappings before PTEs are cleared, and "
        "mmu_notifier_arch_invalidate_secondary_tlbs() must run with the CPU flush before "
        "anything is freed.",
    ),
    "kernel-bug": (
        "-", "BUG",
        "The run hit a condition the kernel would WARN or BUG on (an IPI sent with IRQs "
        "disabled, synchronize_rcu() in atomic context, a hypercall on a stale frame, ...).",
    ),
    "liveness": (
        "-", "DEADLOCK",
        "The run did not reach quiescence: every CPU was waiting (a deadlock, e.g. a "
        "synchronous IPI that can never be taken) or the step limit was hit.",
    ),
    "divergence": (
        "I12", "DIVERGENCE",
        "Two strategies run on the same program disagree on a schedule-robust observable at "
        "quiescence, or one of them violates a check the other passes.",
    ),
}


@dataclass(frozen=True)
class Violation:
    check: str
    strategy: str
    summary: str
    witness: tuple[Event, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def verdict_word(self) -> str:
        return CHECKS[self.check][1]

    @property
    def explanation(self) -> str:
        return CHECKS[self.check][2]

    def signature(self) -> str:
        """Dedup key: the check and what races with what (the kinds of the
        witness events and the walker/path names), not pfns or sequence numbers."""
        parts = [self.check]
        for e in self.witness:
            tag = e.a.get("who") or e.a.get("name") or e.a.get("via") or e.a.get("what") or ""
            parts.append(f"{e.kind}:{tag}" if tag else e.kind)
        return "|".join(parts)


@dataclass
class Verdict:
    """The judgement of one run (one strategy on one platform)."""

    strategy: str
    platform: str
    outcome: str
    violations: list[Violation] = field(default_factory=list)
    behaviours: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def word(self) -> str:
        return "S" if self.ok else "U"

    def checks(self) -> list[str]:
        return check_names(self.violations)


def check_names(violations) -> list[str]:
    """The checks that fired, each once, in the order they first fired."""
    return list(dict.fromkeys(v.check for v in violations))
