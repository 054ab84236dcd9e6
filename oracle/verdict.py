"""Verdicts and violations, and the catalogue of checks with the paragraph
each one uses to explain itself (primer section 3.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from impls.machine.history import Event

#: check name -> (primer invariant, verdict word, one-paragraph explanation).
#: Each paragraph states the contract the check enforces: what it flags, what
#: it deliberately does not flag, and the kernel rule behind it.
CHECKS: dict[str, tuple[str, str, str]] = {
    "stale-tlb": (
        "I3", "STALE-TLB",
        "Flags a CPU that translated through a leaf TLB entry whose page had been freed or "
        "reused, a leaf entry still present on a CPU running the mm when its page is freed, and "
        "one that becomes usable again without a flush after its page was freed (an ASID/PCID "
        "loaded again, a lazy CPU resuming its mm: the translation survived a switch away and "
        "back). Not flagged: a leaf entry left on a lazy-TLB CPU (x86 never touches user memory "
        "in lazy mode and catches up through tlb_gen before it does), one kept under an ASID "
        "the CPU is not using (the hardware uses only the current ASID's entries; x86 "
        "choose_new_asid() flushes it if tlb_gen moved), and a stale leaf to a page that is "
        "still allocated (a GUP pin or a speculative reference keeps it; a free is a reference "
        "drop). Every CPU running the mm must have its entry invalidated, and the invalidation "
        "completed, between clearing the PTE and freeing the page: unhook < invalidate < free "
        "(include/asm-generic/tlb.h).",
    ),
    "stale-psc": (
        "I1", "STALE-PSC",
        "Flags a paging-structure-cache entry, a hardware walk step or a CR3 that still referred "
        "to a page-table page when that page went back to the allocator, or that becomes usable "
        "again without a flush afterwards (its ASID loaded again); a hardware walk through it "
        "(speculative ones and lazy-TLB CPUs included) reads whatever now occupies the frame. "
        "Not flagged: entries to a table that is unhooked but not yet freed (the hardware may "
        "walk a detached table harmlessly until it is reused), and entries kept under an ASID "
        "the CPU is not using (they cannot be walked until it is loaded again). The freeing path "
        "must invalidate the paging-structure caches of every CPU that could hold the table "
        "before it is freed (freed_tables flush, b956575bed91, tlb_table_invalidate()).",
    ),
    "table-uaf": (
        "I2", "UAF-TABLE",
        "Flags a software walker (or a writer) that loaded, stored or locked a page-table page "
        "through a pointer it had read earlier, after the page had been freed or re-purposed. "
        "Not flagged: reading a table that is detached but not yet freed (legal: RCU and the "
        "IRQ-off barrier keep exactly that alive). A lockless walker keeps a table alive only "
        "if the freeing side waits for it: an IPI it cannot take with IRQs off (native flush, "
        "tlb_remove_table_sync_one()), or an RCU grace period (tlb_remove_table(), PT_RECLAIM). "
        "Hypercall and broadcast flushes do not wait for IRQ-off walkers; an IPI does not wait "
        "for rcu_read_lock() walkers.",
    ),
    "leaked-gup-pin": (
        "I6", "LEAKED-GUP-PIN",
        "Flags GUP-fast returning a page that, in the generation it holds a reference to, was "
        "not mapped at the address at any instant of the walk; taking a reference on a free "
        "page; or keeping a reference it neither returned nor dropped. Not flagged: an ABA, "
        "where the page was freed and the same frame mapped again at the address before the "
        "re-check (the page returned is the one mapped there: the re-check is the walk's "
        "linearisation point), and a walker without a re-check whose page was mapped when it "
        "read the PTE and was not freed before the reference (x86 before v4.13 on bare metal). "
        "Also flagged: a THP collapse that copied a page away while a GUP-fast pin on it was "
        "held (writes through the pin are lost). "
        "gup_fast_pte_range() takes an add-unless-zero reference (try_grab_folio_fast()), "
        "re-checks the PMD and PTE, and puts the folio on any mismatch; a collapse refuses a "
        "page whose refcount its mappings do not explain (__collapse_huge_page_isolate()) and "
        "first waits for IRQ-off walkers (tlb_remove_table_sync_one(), 2ba99c5e0881).",
    ),
    "leaked-xen-pin": (
        "I7", "LEAKED-XEN-PIN",
        "Flags a Xen PV page-table page returned to the allocator while still pinned "
        "(PG_pinned, Xen's type/pin reference, or the read-only direct-map alias), and an unpin "
        "Xen refused because some vCPU's effective CR3 still used the pgd. Not flagged: a table "
        "released (unpinned, writable) before its RCU-delayed free; Linux relies on Xen's own "
        "type rules for the hardware side there. Tables must be released "
        "(xen_release_ptpage()) and the hypercall issued before they are freed, and "
        "xen_drop_mm_ref() must move every vCPU whose xen_current_cr3 is the pgd off it "
        "before xen_pgd_unpin() (9f79991d4186).",
    ),
    "ordering": (
        "I4/I5", "ORDERING",
        "Flags a page or page-table page freed before an invalidation covering it had "
        "completed on every CPU that could cache it since it was unhooked, whether or not a "
        "stale entry happened to exist: for a table, every CPU with the mm loaded in CR3 "
        "(lazy-TLB CPUs included); for a data page, every CPU running the mm; with ASIDs, also "
        "every CPU keeping the mm under an ASID it switched away from, whose debt is judged when "
        "it loads that ASID again (without a flush: a violation). A flush still queued (Xen lazy "
        "mode), still in flight (INVLPGB before TLBSYNC) or that skipped a CPU does not count. "
        "Not flagged: CPUs that could not have cached the entry since the unhook (the mm not in "
        "their CR3 or ASIDs, or only lazily for a leaf), a free while the debt is owed only "
        "under an inactive ASID, and a free deferred by a reference (the page is freed, and "
        "judged, at the last put).",
    ),
    "accounting": (
        "I11", "ACCOUNTING",
        "Flags books that do not balance: a page freed (or put) again after it was freed, a "
        "table freed while it still mapped pages, and at quiescence an unhooked table never "
        "freed, a page whose reference count does not match its mappings, RSS or nr_ptes "
        "counters that do not match the page tables, or RCU callbacks still pending. Not "
        "flagged: a page kept allocated past its free by another reference (every free of a "
        "page is a reference drop, __free_pages() -> put_page_testzero(); the page goes back "
        "to the allocator at the last put).",
    ),
    "stale-secondary": (
        "I10", "STALE-SECONDARY",
        "Flags a secondary MMU that kept a translation (a KVM spte, an IOMMU IOTLB or "
        "paging-structure entry) to a page or table after it was freed. Not flagged: "
        "secondary entries to pages or tables still allocated. "
        "mmu_notifier_invalidate_range_start() must zap software secondary mappings before "
        "PTEs are cleared, and mmu_notifier_arch_invalidate_secondary_tlbs() must run with "
        "the CPU flush (with the caller's range) before anything is freed.",
    ),
    "bad-walk": (
        "I9", "BAD-WALK",
        "Flags a walker (software or hardware) that followed a PMD, PUD or PGD value as a table "
        "pointer when it was not one: a huge leaf (a THP folio), the not-present value "
        "pmdp_invalidate() leaves while a huge PMD is split, or an entry to a frame that is no "
        "longer a page table; the frame it then read as a table is a data page that a live "
        "entry points to. Not flagged: a walker that reads such a value and does not descend "
        "(the kernel's rule), and an access through a pointer taken when the frame had another "
        "generation or was freed (a use-after-free: table-uaf, stale-psc). Read an entry once "
        "(pmdp_get_lockless()) and descend only if pmd_present() && !pmd_leaf(): "
        "___pte_offset_map() returns NULL for none, migration, huge and bad values (0d940a9b270b), "
        "gup_fast_pmd_range() sends leaves to gup_fast_pmd_leaf(), x86 keeps _PAGE_PSE in the "
        "split's transient value so pmd_trans_huge() stays true (027ef6c87853).",
    ),
    "kernel-bug": (
        "-", "BUG",
        "Flags a condition the kernel would WARN or BUG on (an IPI sent with IRQs disabled, "
        "synchronize_rcu() in atomic context, a hypercall on a stale frame, ...).",
    ),
    "liveness": (
        "-", "DEADLOCK",
        "Flags a run that did not reach quiescence: every CPU was waiting (a deadlock, e.g. a "
        "synchronous IPI that can never be taken) or the step limit was hit.",
    ),
    "divergence": (
        "I12", "DIVERGENCE",
        "Flags two strategies run on the same program that disagree, at quiescence, on a "
        "schedule-robust observable: whether a page is mapped, for pages that only one CPU's "
        "operations mutate and whose mm is the same under every schedule; which mms exited, "
        "when that is certain; how many pages leaked. Not flagged: frame numbers, the timing "
        "and number of flushes, IPIs and RCU callbacks, pages that several CPUs (or an "
        "operation whose mm depends on the schedule) may mutate, and the absolute checks' "
        "verdicts, which are reported per strategy.",
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
