"""Programs: the frozen input every driver feeds the machine.

A program is a litmus test: a few CPUs, one or two address spaces, initial
VMAs, a sequential ``setup`` part, and the concurrent operations, each bound to
a CPU (a CPU runs its operations in program order).  It may carry an explicit
:class:`~impls.machine.choices.Schedule`.  The same type is produced by the
fuzz generators, the YAML corpus reader and the minimiser; there is no second,
driver-specific input format.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .choices import Schedule

#: Operation kinds and the arguments each takes (name -> (args, one-line doc)).
OP_KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "mmap": (("addr", "len"), "create an anonymous VMA [addr, addr+len) (MAP_FIXED_NOREPLACE)"),
    "munmap": (("addr", "len"), "munmap(): zap, free_pgtables() through the strategy, final flush"),
    "madvise": (("addr", "len"), "madvise(MADV_DONTNEED): zap; with PT_RECLAIM also frees empty PTE tables"),
    "access": (("addr", "write"), "a user load/store through the TLB; faults the page in if needed"),
    "populate": (("addr", "len"), "fault in every page of the range (MAP_POPULATE-like)"),
    "gup_fast": (("addr", "write"), "get_user_pages_fast() of one page (FOLL_PIN), then unpin it"),
    "pte_walk": (("addr",), "a pte_offset_map() walker under rcu_read_lock(), IRQs on"),
    "switch": (("mm",), "context switch to a thread of mm N, or to a kernel thread (mm: null, lazy TLB)"),
    "exit": ((), "the current process exits (exit_group): its last thread runs exit_mmap()"),
    "spec_walk": (("addr",), "a speculative hardware page walk by this CPU (fills TLB/PSC)"),
    "kvm_fault": (("addr",), "KVM maps guest page addr (secondary MMU fed by mmu notifiers)"),
    "kvm_access": (("addr",), "a guest access through KVM's secondary page tables"),
    "iommu_access": (("addr",), "a device DMA through the IOMMU (SVA): IOTLB + PSC, hardware walk"),
    "mremap": (("addr", "len", "new_addr"), "mremap(addr, len, len, MREMAP_MAYMOVE|MREMAP_FIXED, "
               "new_addr): move_page_tables() (whole PTE tables with move_normal_pmd(), else "
               "move_ptes()), then unmap the old range"),
    "revoke": (("file",), "the driver of device file F revokes its frames: unmap_mapping_range() "
               "of the whole file in every mm, from this CPU, then the frames are released"),
    "truncate": (("file", "offset", "len"), "punch a hole in shmem file F (shmem_fallocate(PUNCH_HOLE)): "
                 "unmap_mapping_range() in every mm that maps the range, from this CPU, then the "
                 "page-cache pages are dropped"),
    "collapse": (("addr",), "madvise(MADV_COLLAPSE) of the 2 MiB range at addr: collapse_huge_page() (thp)"),
    "khugepaged": (("mm", "addr"), "one khugepaged scan step of mm N's 2 MiB range at addr, on this CPU "
                   "(a kernel thread): hpage_collapse_scan_pmd() -> collapse_huge_page() (thp)"),
    "split": (("addr",), "split_huge_pmd() of the huge PMD mapping addr, as slow GUP with FOLL_SPLIT_PMD "
              "does under the mmap read lock (thp)"),
}

#: arguments an operation may take besides its required ones (name -> args)
OPTIONAL_ARGS: dict[str, tuple[str, ...]] = {
    "mmap": ("file", "offset"),
}

#: the kinds of file a program may declare (``files:``)
FILE_KINDS: dict[str, str] = {
    "shmem": "a tmpfs/shmem file: page-cache pages with their own lifetime, mapped MAP_SHARED",
    "hugetlb": "a hugetlbfs file: 2 MiB pages, mapped MAP_SHARED; mms that map the same PUD-aligned "
               "1 GiB of it share its PMD table (huge_pmd_share()) and unshare it when they unmap it",
    "device": "a driver's device file: mmap gives a VM_PFNMAP mapping of raw device frames "
              "(vmf_insert_pfn(): no refcount, no rmap), which the driver can revoke",
}


@dataclass(frozen=True, slots=True)
class Op:
    cpu: int
    kind: str
    addr: int = 0
    len: int = 0
    write: bool = False
    mm: int | None = None
    #: a file index (``files:`` of the program): mmap of a file, truncate
    file: int | None = None
    #: a byte offset into ``file``
    offset: int = 0
    #: the destination of an mremap
    new_addr: int = 0

    def describe(self) -> str:
        args = OP_KINDS[self.kind][0] + tuple(a for a in OPTIONAL_ARGS.get(self.kind, ())
                                              if self.file is not None)
        parts = []
        for a in args:
            v = getattr(self, a)
            if a in ("addr", "len", "offset", "new_addr"):
                parts.append(f"{a}={v:#x}")
            elif a == "file":
                parts.append(f"file{v}")
            elif a == "write":
                if v:
                    parts.append("write")
            elif a == "mm":
                parts.append("kthread" if v is None else f"mm{v}")
        return f"{self.kind}({', '.join(parts)})"


PT_RECLAIM_MODES = ("off", "on", "v6.14-rc1")


@dataclass(frozen=True, slots=True)
class Env:
    """Kernel configuration and attached devices the program runs with.

    ``pt_reclaim``: ``off``; ``on`` (CONFIG_PT_RECLAIM: MADV_DONTNEED frees
    empty PTE tables, as fixed in Feb 2025); ``v6.14-rc1`` (the original fast
    path of 6375e95f381e, before "mm: pgtable: fix incorrect reclaim of
    non-empty PTE pages").
    ``kvm`` / ``iommu``: a KVM VM / an SVA-bound device is attached to every mm.
    ``skip_mmu_notifiers``: fault injection, zap paths skip the mmu notifiers
    (the class of bug fixed by fd1102f0aade "mm: mmu_notifier fix for
    tlb_end_vma").
    ``options``: the platform's options, ``((name, value), ...)`` sorted by
    name (``OPTIONS`` of the platform module: native's ``pcid``, ``invlpg``;
    Xen's ``type_change_flush``...); unset ones take the platform's default.
    ``thp``: anonymous transparent huge pages (CONFIG_TRANSPARENT_HUGEPAGE,
    enabled=always): a fault on a none PMD whose 2 MiB range the VMA covers
    may map a huge PMD (the ``alloc_fails:thp_folio`` choice decides), and
    the ``collapse``, ``khugepaged`` and ``split`` operations run.
    """

    pt_reclaim: str = "off"
    kvm: bool = False
    iommu: bool = False
    skip_mmu_notifiers: bool = False
    options: tuple[tuple[str, str], ...] = ()
    thp: bool = False


@dataclass(frozen=True, slots=True)
class Program:
    cpus: int = 2
    mms: int = 1
    platform: str = "native"
    #: initial task per CPU: an mm index, or None for a kernel thread
    start: tuple[int | None, ...] = ()
    #: initial VMAs: (mm, start, len)
    vmas: tuple[tuple[int, int, int], ...] = ()
    setup: tuple[Op, ...] = ()
    ops: tuple[Op, ...] = ()
    env: Env = field(default_factory=Env)
    schedule: Schedule | None = None
    #: the files the program's mms may map: a kind of FILE_KINDS each
    files: tuple[str, ...] = ()
    #: initial file-backed VMAs: (mm, start, len, file, offset)
    file_vmas: tuple[tuple[int, int, int, int, int], ...] = ()

    def start_of(self, cpu: int) -> int | None:
        if cpu < len(self.start):
            return self.start[cpu]
        return 0

    def with_schedule(self, schedule: Schedule | None) -> Program:
        return replace(self, schedule=schedule)

    def ops_of(self, cpu: int) -> list[Op]:
        return [op for op in self.ops if op.cpu == cpu]
