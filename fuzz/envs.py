"""Environments: the columns of the verdict matrix (primer section 2).

An environment is a platform plus the knobs that change verdicts: which
readers race with frees (IRQ-off GUP-fast always; RCU-only ``pte_offset_map()``
walkers with PT_RECLAIM), whether the table-batch allocation fails (the
single-table fallback), whether lazy-TLB CPUs are about.  It tells the
generator what to generate and the choice source how to bias its flips.

Strategies name the environments they claim to be safe on in ``SAFE_ON``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from impls.machine.choices import DEFAULT_BIASES

from .generate import DEFAULT_WEIGHTS, GenConfig, op_weights


@dataclass(frozen=True)
class Environment:
    name: str
    primer: str        # the primer's column (E1..E8)
    platform: str
    description: str
    pt_reclaim: str = "off"
    weights: dict[str, float] = field(default_factory=dict)
    biases: dict[str, float] = field(default_factory=dict)
    kvm: bool = False
    iommu: bool = False
    #: lazy-TLB CPUs (kernel-thread switches, exits) are generated; the
    #: native columns other than E8 have none, so that an E1 verdict never
    #: rests on a lazy CPU (E8's question)
    lazy_tlb: bool = True
    #: files the programs declare and map (fuzz.generate: shared file mappings
    #: in several mms, truncate through the rmap)
    files: tuple[str, ...] = ()
    #: how many address spaces a program has (sharing needs several)
    mms: tuple[int, int] = (1, 2)
    #: transparent huge pages (Env.thp): huge faults, collapse, khugepaged, split
    thp: bool = False

    def gen_config(self, length: int = 32, platform: str | None = None) -> GenConfig:
        w = dict(DEFAULT_WEIGHTS)
        w.update(self.weights)
        return GenConfig(platform=platform or self.platform, length=length, pt_reclaim=self.pt_reclaim,
                         kvm=self.kvm, iommu=self.iommu, lazy_tlb=self.lazy_tlb, weights=w,
                         files=self.files, mms=self.mms, thp=self.thp)

    def choice_biases(self) -> dict[str, float]:
        b = dict(DEFAULT_BIASES)
        b.update(self.biases)
        return b

    def on_platform(self, platform: str) -> Environment:
        """The same knobs on another platform (a user's platform file)."""
        return replace(self, platform=platform)

    def impossible_behaviours(self, platform: Any) -> dict[str, str]:
        """The behaviour events (oracle.behaviours) no program can show in
        this environment on ``platform`` (an Ops), with the reason; a summary
        must not list them as "not reached".  Only claims that follow from
        the knobs or from a built-in platform's code; a platform file is
        judged by the hooks it defines, and otherwise given the benefit of
        the doubt."""
        out: dict[str, str] = {}
        name = getattr(platform, "name", self.platform)
        builtin = not str(getattr(platform, "source", "")).endswith(".py")
        if getattr(platform, "broadcast_tlb_flush", None) is None:
            out["broadcast-flush"] = f"{name} has no broadcast flush (INVLPGB + TLBSYNC)"
        if builtin and name != "xen-pv" or getattr(platform, "enter_lazy_mmu", True) is None:
            out["xen-mc-deferred"] = f"{name} has no Xen multicalls"
        if builtin and name in ("xen-pv", "broadcast", "arm64"):
            # xen_flush_tlb_multi() / INVLPGB: remote CPUs never run flush_tlb_func(),
            # whose lazy-TLB branch (switch to init_mm) is what this behaviour counts
            out["lazy-cpu-table-flush"] = f"{name}'s flush does not run flush_tlb_func() on other CPUs"
        if builtin and name != "native":
            # should_flush_tlb() and flush_tlb_func() on remote CPUs are native_flush_tlb_multi()'s
            out["flush-ipi-to-switching-cpu"] = f"{name}'s flush does not ask should_flush_tlb()"
            out["cpumask-trimmed"] = f"{name}'s flush does not run flush_tlb_func() on other CPUs"
        if builtin and name == "xen-pv":
            out["asid-reloaded-without-flush"] = "Xen PV guests run without PCIDs"
        if builtin and name != "xen-pv" or getattr(platform, "release_pte", True) is None:
            out["xen-type-change-flush"] = f"{name} is not Xen PV"
        if not self.lazy_tlb:
            # no kernel-thread switch and no exit is generated (fuzz.generate.op_weights)
            out["lazy-cpu-table-flush"] = "no lazy-TLB CPUs in this environment"
            out["speculative-walk-lazy"] = "no lazy-TLB CPUs in this environment"
            out["mm-freed"] = "no exit is generated in this environment"
        if self.pt_reclaim == "off":
            out["pt-reclaim-freed-table"] = "PT_RECLAIM is off"
        if not self.kvm:
            out["kvm-fault-retried"] = "no KVM guest"
        if not (set(self.files) & {"shmem", "device"}):
            out["rmap-zap-foreign-mm"] = "no shmem or device file mappings in this environment"
            out["truncate-unmapped-refaulted-page"] = "no shmem file mappings in this environment"
        if "mremap" not in op_weights(self.gen_config()):
            out["moved-pte-cached-at-old-address"] = "no mremap is generated in this environment"
            out["moved-table-cached-at-old-address"] = "no mremap is generated in this environment"
        if "hugetlb" not in self.files:
            for b in ("hugetlb-pmd-shared", "walker-in-unshared-table", "hugetlb-table-fully-unshared"):
                out[b] = "no hugetlb file mappings in this environment"
        if not self.thp:
            # huge PMDs of THP exist only with env.thp: the huge fault (memory.py),
            # collapse (khugepaged.py), split (huge_memory.py) and GUP-fast's pmd_leaf()
            # test are all behind it, and the generator draws no THP operation without
            # it; a walker may still meet a hugetlb PMD leaf
            hugetlb = "hugetlb" in self.files
            for b in THP_BEHAVIOURS:
                if not (hugetlb and b.startswith("walker-saw-")):
                    out[b] = "no transparent huge pages in this environment"
        if self.choice_biases().get("alloc_fails:mmu_table_batch", 0.0) <= 0.0:
            out["table-batch-alloc-failed"] = "table-batch allocations never fail here"
        return out


#: the behaviours that need a huge PMD (Environment.thp)
THP_BEHAVIOURS = ("thp-fault-huge", "thp-collapsed", "walker-mid-walk-at-collapse", "collapse-refused-pinned",
                  "walker-saw-huge-pmd", "walker-saw-split-pmd", "huge-pmd-split", "deposited-table-freed")

_NO_RCU_WALKERS = {"pte_walk": 0.0}
_NO_BATCH_FAIL = {"alloc_fails:mmu_table_batch": 0.0}
_BATCH_FAIL = {"alloc_fails:mmu_table_batch": 1.0}
_RECLAIM = {"pte_walk": 6.0, "madvise": 5.0, "populate": 3.0}
_LAZY = {"switch": 6.0, "spec_walk": 6.0}
#: shared file mappings: walkers and accesses in several mms meet truncates
#: from CPUs that run none of them
_FILE = {"truncate": 4.0, "mmap": 3.0, "access": 7.0, "gup_fast": 6.0, "mremap": 3.0, "revoke": 2.0}
_FILE_DESC = ("{base} with a shmem file mapped MAP_SHARED by 2-3 mms, truncate (hole punch) "
              "zapping its pages in every mm through the i_mmap rmap, from any CPU, mremap "
              "moving PTEs and whole PTE tables under walkers, and a device mapped VM_PFNMAP "
              "whose driver revokes its frames from any CPU")
#: THP: collapses and splits next to the walkers that race with them
#: (GUP-fast, pte_offset_map() users: no PT_RECLAIM here, so RCU-only walkers
#: meet splits but no table frees), and the zaps that free deposited tables
#: hugetlb PMD sharing: 2-3 mms map one hugetlbfs GiB at the same place (the
#: generator aims 60% of these operations at it): walkers (GUP-fast, hardware
#: walks, accesses) in one mm meet munmap/madvise/exit unsharing in another
_HUGETLB = {"gup_fast": 9.0, "access": 7.0, "spec_walk": 5.0, "munmap": 5.0, "madvise": 3.0,
            "mmap": 4.0, "populate": 1.0, "pte_walk": 0.0, "mremap": 0.0}
_HUGETLB_DESC = ("{base} with a hugetlbfs file mapped MAP_SHARED at the same PUD-aligned GiB by 2-3 "
                 "mms: huge_pmd_share() on faults, huge_pmd_unshare() through the mmu_gather "
                 "(unshared_tables, its flush and GUP-fast sync) on munmap, madvise and exit, the "
                 "shared PMD table freed by its last sharer")
_THP = {"collapse": 5.0, "khugepaged": 3.0, "split": 2.0, "gup_fast": 9.0, "pte_walk": 1.5,
        "madvise": 3.0, "populate": 2.0}

ENVIRONMENTS: dict[str, Environment] = {e.name: e for e in (
    Environment("native", "E1", "native",
                "bare metal, synchronous IPI flush; IRQ-off walkers (GUP-fast) race with frees",
                weights=_NO_RCU_WALKERS, biases=_NO_BATCH_FAIL, lazy_tlb=False),
    Environment("native+pt-reclaim", "E2", "native",
                "E1 plus RCU-only pte_offset_map() walkers while PT_RECLAIM frees empty PTE tables",
                pt_reclaim="on", weights=_RECLAIM, lazy_tlb=False),
    Environment("xen-pv", "E3", "xen-pv",
                "Xen PV: hypercall flush (no IPI), lazy multicalls, pinning",
                weights=_NO_RCU_WALKERS, biases=_NO_BATCH_FAIL),
    Environment("broadcast", "E4", "broadcast",
                "broadcast flush without IPIs (INVLPGB + TLBSYNC)",
                weights=_NO_RCU_WALKERS, biases=_NO_BATCH_FAIL),
    Environment("arm64", "E5", "arm64",
                "arm64: broadcast TLBI ... IS completed by DSB ISH (no IPI), per-mm ASIDs, "
                "leaf-only or walk-cache invalidation from the gather flags",
                weights=_NO_RCU_WALKERS, biases=_NO_BATCH_FAIL),
    Environment("native+batch-fail", "E7", "native",
                "E1 with every table-batch allocation failing (the single-table fallback)",
                weights=_NO_RCU_WALKERS, biases=_BATCH_FAIL, lazy_tlb=False),
    Environment("xen-pv+batch-fail", "E7", "xen-pv",
                "E3 with every table-batch allocation failing",
                weights=_NO_RCU_WALKERS, biases=_BATCH_FAIL),
    Environment("broadcast+batch-fail", "E7", "broadcast",
                "E4 with every table-batch allocation failing",
                weights=_NO_RCU_WALKERS, biases=_BATCH_FAIL),
    Environment("arm64+batch-fail", "E7", "arm64",
                "E5 with every table-batch allocation failing",
                weights=_NO_RCU_WALKERS, biases=_BATCH_FAIL),
    Environment("native+pt-reclaim+batch-fail", "E7", "native",
                "E2 with every table-batch allocation failing: RCU-only walkers meet the fallback",
                pt_reclaim="on", weights=_RECLAIM, biases=_BATCH_FAIL, lazy_tlb=False),
    Environment("native+lazy", "E8", "native",
                "E1 with CPUs going lazy-TLB (kernel threads) and walking speculatively",
                weights={**_NO_RCU_WALKERS, **_LAZY}, biases=_NO_BATCH_FAIL),
    Environment("native+secondary-mmu", "E1", "native",
                "E1 with a KVM guest and an SVA-bound IOMMU walking the mm: secondary MMUs "
                "invalidated through mmu notifiers (not a column of the primer's matrix)",
                weights={**_NO_RCU_WALKERS, "kvm_fault": 3.0, "kvm_access": 3.0, "iommu_access": 4.0},
                biases=_NO_BATCH_FAIL, kvm=True, iommu=True, lazy_tlb=False),
    Environment("native+switch", "E1", "native",
                "E1 with CPUs switching between processes while they zap: PCIDs kept across switches, "
                "flushes racing switch_mm_irqs_off() (not a column of the primer's matrix)",
                weights={**_NO_RCU_WALKERS, "switch": 8.0, "madvise": 6.0, "munmap": 1.0, "mmap": 1.0,
                         "gup_fast": 3.0},
                biases=_NO_BATCH_FAIL, lazy_tlb=False),
    Environment("native+file", "E1", "native", _FILE_DESC.format(base="E1"),
                weights={**_NO_RCU_WALKERS, **_FILE}, biases=_NO_BATCH_FAIL, lazy_tlb=False,
                files=("shmem", "device"), mms=(2, 3)),
    Environment("xen-pv+file", "E3", "xen-pv", _FILE_DESC.format(base="E3"),
                weights={**_NO_RCU_WALKERS, **_FILE}, biases=_NO_BATCH_FAIL,
                files=("shmem", "device"), mms=(2, 3)),
    Environment("broadcast+file", "E4", "broadcast", _FILE_DESC.format(base="E4"),
                weights={**_NO_RCU_WALKERS, **_FILE}, biases=_NO_BATCH_FAIL,
                files=("shmem", "device"), mms=(2, 3)),
    Environment("native+thp", "E1", "native",
                "E1 with transparent huge pages: huge faults, MADV_COLLAPSE and khugepaged "
                "collapses, PMD splits, zaps that free deposited PTE tables",
                weights=_THP, biases=_NO_BATCH_FAIL, lazy_tlb=False, thp=True),
    Environment("native+thp+lazy", "E8", "native",
                "E8 with transparent huge pages: lazy-TLB CPUs next to collapses, whose "
                "flush_tlb_range() must reach them (freed_tables, 3ef938c35035)",
                weights={**_THP, **_LAZY}, biases=_NO_BATCH_FAIL, thp=True),
    Environment("xen-pv+thp", "E3", "xen-pv",
                "E3 with transparent huge pages (a hypercall flush with THP: Xen PV itself gives "
                "guests no THP, KVM and Hyper-V PV flush guests do)",
                weights=_THP, biases=_NO_BATCH_FAIL, thp=True),
    Environment("broadcast+thp", "E4", "broadcast",
                "E4 with transparent huge pages",
                weights=_THP, biases=_NO_BATCH_FAIL, thp=True),
    Environment("native+hugetlb", "E1", "native", _HUGETLB_DESC.format(base="E1"),
                weights=_HUGETLB, biases=_NO_BATCH_FAIL, lazy_tlb=False, files=("hugetlb",), mms=(2, 3)),
    Environment("xen-pv+hugetlb", "E3", "xen-pv", _HUGETLB_DESC.format(base="E3"),
                weights=_HUGETLB, biases=_NO_BATCH_FAIL, files=("hugetlb",), mms=(2, 3)),
    Environment("broadcast+hugetlb", "E4", "broadcast", _HUGETLB_DESC.format(base="E4"),
                weights=_HUGETLB, biases=_NO_BATCH_FAIL, files=("hugetlb",), mms=(2, 3)),
    Environment("arm64+hugetlb", "E5", "arm64", _HUGETLB_DESC.format(base="E5"),
                weights=_HUGETLB, biases=_NO_BATCH_FAIL, files=("hugetlb",), mms=(2, 3)),
)}


def environment(name: str) -> Environment:
    try:
        return ENVIRONMENTS[name]
    except KeyError:
        raise KeyError(f"unknown environment {name!r} (known: {', '.join(ENVIRONMENTS)})") from None


def default_environment(platform: str) -> Environment:
    """The plain environment of a built-in platform, or E1's knobs on a
    user's platform file."""
    if platform in ENVIRONMENTS:
        return ENVIRONMENTS[platform]
    return ENVIRONMENTS["native"].on_platform(platform)
