"""Per-CPU and per-mm state, IRQ/preempt/RCU-reader state, and locks.

A simulated CPU is a generator: each ``yield`` is a preemption point and yields
a label naming it (``"gup_fast:pmd_read"``).  Blocking is a loop that sets
``cpu.wait`` to a predicate and yields; the scheduler does not step a CPU whose
predicate is false, except to deliver an interrupt when IRQs are enabled.

RCU readers: with consolidated RCU (v4.20+) an IRQ-disabled or
preempt-disabled region is a read-side critical section exactly like
``rcu_read_lock()``.  ``in_reader()`` is the union; ``rcu_sid`` numbers the
outermost sections so a grace period can wait for the readers that were
running when it started (kernel/rcu/tree.c).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from .page_alloc import Frame, SpinLock

if TYPE_CHECKING:
    from .machine import Machine

Step = Generator[str, None, Any]

#: arch/x86/include/asm/tlbflush.h: TLB_NR_DYN_ASIDS, the per-CPU dynamic ASIDs
TLB_NR_DYN_ASIDS = 6


class Vma:
    """struct vm_area_struct: the range, and for a file mapping the file
    (``vm_file->f_mapping``), the file offset of ``start`` in pages
    (``vm_pgoff``) and ``vm_flags``; ``mm`` is ``vm_mm``."""

    __slots__ = ("start", "end", "file", "pgoff", "flags", "mm", "vma_lock")

    def __init__(self, start: int, end: int, file: Any = None, pgoff: int = 0, flags: int = 0,
                 mm: Any = None) -> None:
        self.start = start
        self.end = end
        self.file = file
        self.pgoff = pgoff
        self.flags = flags
        self.mm = mm
        #: a hugetlb VMA's lock (``vm_private_data``, struct hugetlb_vma_lock):
        #: None for other VMAs, and once freed at the final unmap
        self.vma_lock: RwSem | None = None
        if file is not None and getattr(file, "kind", None) == "hugetlb":
            self.vma_lock = RwSem(f"{file.name}.vma_lock")

    def piece(self, start: int, end: int) -> Vma:
        """The part [start, end) of this VMA as a VMA of its own (a split):
        the same file, ``vm_pgoff`` advanced by the pages cut off the front.
        MODEL: the pieces of a hugetlb VMA share its VMA lock."""
        v = Vma(start, end, self.file, self.pgoff + ((start - self.start) >> 12), self.flags, self.mm)
        v.vma_lock = self.vma_lock
        return v

    def linear_page_index(self, addr: int) -> int:
        """include/linux/pagemap.h: linear_page_index()."""
        return ((addr - self.start) >> 12) + self.pgoff


class RwSem:
    """A sleeping reader/writer lock (``mmap_lock``)."""

    __slots__ = ("name", "readers", "writer")

    def __init__(self, name: str) -> None:
        self.name = name
        self.readers = 0
        self.writer: int | None = None


class Mm:
    """struct mm_struct (the parts the checks need)."""

    __slots__ = (
        "id", "pgd", "pgd_gen", "vmas", "cpumask", "tlb_gen", "rss",
        "nr_ptes", "nr_pmds", "nr_puds", "page_table_lock", "mmap_lock",
        "tlb_flush_pending", "exited", "freed", "pv", "kvm", "iommu",
        "notifier_active", "dying", "anon_vma_lock",
    )

    def __init__(self, mm_id: int, pgd: Frame | None) -> None:
        self.id = mm_id
        self.pgd = pgd
        self.pgd_gen = pgd.gen if pgd else 0
        self.vmas: list[Vma] = []
        self.cpumask = 0          # mm_cpumask() as a bitmask
        self.tlb_gen = 1          # mm->context.tlb_gen
        self.rss = 0
        self.nr_ptes = 0
        self.nr_pmds = 0
        self.nr_puds = 0
        self.page_table_lock = SpinLock(f"mm{mm_id}.page_table_lock")
        self.mmap_lock = RwSem(f"mm{mm_id}.mmap_lock")
        self.tlb_flush_pending = 0
        self.dying = False        # exit_group() started
        self.exited = False       # exit_mmap() done
        self.freed = False        # __mmdrop(): pgd freed
        self.pv: dict[str, Any] = {}
        self.kvm: Any = None      # secondary MMUs registered through mmu notifiers
        self.iommu: Any = None
        self.notifier_active = 0  # invalidate_range_start/end nesting
        # MODEL: one anon_vma per mm (its rwsem); only collapse takes it here
        self.anon_vma_lock = RwSem(f"mm{mm_id}.anon_vma")

    @property
    def name(self) -> str:
        if self.id < 0:
            return "init_mm" if self.id == -1 else "LOADED_MM_SWITCHING"
        return f"mm{self.id}"

    def find_vma(self, addr: int) -> Vma | None:
        for v in self.vmas:
            if v.start <= addr < v.end:
                return v
        return None



def pgd_of(mm: Mm) -> tuple[Frame, int]:
    """``pgd_offset()``'s starting point for a user mm: its top-level table
    and the generation its walkers believe it has (only init_mm has no pgd
    here, and nothing walks it)."""
    pgd = mm.pgd
    assert pgd is not None, "init_mm has no pgd"
    return pgd, mm.pgd_gen


class Cpu:
    __slots__ = (
        "id", "m", "irq_off", "rcu_nesting", "preempt_count", "rcu_sid",
        "current_mm", "active_mm", "loaded_mm", "is_lazy", "cr3_pfn", "cr3_gen",
        "tlb", "psc", "ipi", "gen", "wait", "label", "done",
        "pv", "op_index", "ops", "lazy_mmu", "op_mm", "in_irq",
        "loaded_mm_asid", "next_asid", "ctxs", "hw_asid", "asid_caches",
    )

    def __init__(self, cpu_id: int, machine: Machine) -> None:
        self.id = cpu_id
        self.m = machine
        self.irq_off = 0
        self.rcu_nesting = 0
        self.preempt_count = 0
        self.rcu_sid = 0
        self.current_mm: Mm | None = None  # current->mm (None: kernel thread)
        self.active_mm: Mm | None = None   # current->active_mm
        self.loaded_mm: Mm | None = None   # cpu_tlbstate.loaded_mm
        self.is_lazy = False               # cpu_tlbstate_shared.is_lazy
        self.cr3_pfn = 0                   # what the hardware walker uses
        self.cr3_gen = 0
        # the hardware's caches of the current ASID (PCID); every ASID's in
        # asid_caches (the hardware keeps entries of inactive ASIDs)
        self.tlb: dict[int, tuple[int, int, bool]] = {}        # vpn -> (pfn, gen, rw)
        self.psc: dict[tuple[int, int], tuple[int, int]] = {}  # (level, prefix) -> (pfn, gen)
        self.hw_asid = 0
        self.asid_caches: dict[int, tuple[dict, dict]] = {0: (self.tlb, self.psc)}
        # cpu_tlbstate: loaded_mm_asid, next_asid, ctxs[]: [ctx mm, tlb_gen]
        # (initialize_tlbstate_and_flush(): ASID 0 holds the boot mm)
        self.loaded_mm_asid = 0
        self.next_asid = 1
        self.ctxs: list[list[Any]] = [[None, 0] for _ in range(TLB_NR_DYN_ASIDS)]
        self.ipi: deque[Any] = deque()
        self.gen: Iterator[Any] | None = None  # (yields labels; a plug-in hook may yield None)
        self.wait: Callable[[], bool] | None = None
        #: the label of the preemption point it is at: what its generator
        #: yielded (a string; a plug-in hook's bare ``yield`` gives None)
        self.label: Any = "idle"
        self.done = False
        self.pv: dict[str, Any] = {}
        self.op_index = -1
        self.ops: list[Any] = []
        self.lazy_mmu = False              # arch_enter_lazy_mmu_mode() nesting flag
        self.op_mm: Mm | None = None       # the mm the current operation works on
        self.in_irq = False                # in_interrupt()

    def in_reader(self) -> bool:
        return self.irq_off > 0 or self.rcu_nesting > 0 or self.preempt_count > 0

    def irqs_disabled(self) -> bool:
        return self.irq_off > 0


# -- include/linux/irqflags.h, preempt.h, rcupdate.h -------------------------

def _enter_reader(cpu: Cpu) -> None:
    if not (cpu.irq_off > 0 or cpu.rcu_nesting > 0 or cpu.preempt_count > 0):  # not cpu.in_reader()
        cpu.rcu_sid += 1


def local_irq_disable(cpu: Cpu) -> None:
    _enter_reader(cpu)
    cpu.irq_off += 1
    cpu.m.h.emit(cpu.id, "irq_off")


def local_irq_enable(cpu: Cpu) -> None:
    cpu.irq_off -= 1
    assert cpu.irq_off >= 0, "unbalanced local_irq_enable()"
    cpu.m.h.emit(cpu.id, "irq_on")


# local_irq_save()/local_irq_restore(): nesting is tracked by the counter
local_irq_save = local_irq_disable
local_irq_restore = local_irq_enable


def preempt_disable(cpu: Cpu) -> None:
    _enter_reader(cpu)
    cpu.preempt_count += 1


def preempt_enable(cpu: Cpu) -> None:
    cpu.preempt_count -= 1
    assert cpu.preempt_count >= 0, "unbalanced preempt_enable()"


def rcu_read_lock(cpu: Cpu) -> None:
    _enter_reader(cpu)
    cpu.rcu_nesting += 1


def rcu_read_unlock(cpu: Cpu) -> None:
    cpu.rcu_nesting -= 1
    assert cpu.rcu_nesting >= 0, "unbalanced rcu_read_unlock()"


def wait_until(cpu: Cpu, pred: Callable[[], bool], label: str) -> Step:
    """Block (spin or sleep) until ``pred()`` holds; a preemption point."""
    while not pred():
        cpu.wait = pred
        yield label
    cpu.wait = None


# -- locks -------------------------------------------------------------------

def spin_lock(cpu: Cpu, lock: SpinLock, label: str = "spin_lock") -> Step:
    """spin_lock(): disables preemption (an RCU reader from here on).

    Taking a split PTL touches the ptdesc of its table: that access is checked
    like any other software access to table memory.
    """
    if lock.frame is not None:
        cpu.m.sw_touch(cpu, lock.frame, lock.gen, "ptl")
    if lock.owner is not None:
        yield from wait_until(cpu, lambda: lock.owner is None, label)
    lock.owner = cpu.id
    preempt_disable(cpu)


def spin_trylock(cpu: Cpu, lock: SpinLock, fails: bool = False) -> bool:
    if lock.owner is not None or fails:
        return False
    lock.owner = cpu.id
    preempt_disable(cpu)
    return True


def spin_unlock(cpu: Cpu, lock: SpinLock) -> None:
    assert lock.owner == cpu.id, f"{lock.name} unlocked by cpu{cpu.id}, owner {lock.owner}"
    lock.owner = None
    preempt_enable(cpu)


def down_read(cpu: Cpu, sem: RwSem, label: str = "mmap_read_lock") -> Step:
    if sem.writer is not None:
        yield from wait_until(cpu, lambda: sem.writer is None, label)
    sem.readers += 1


def up_read(cpu: Cpu, sem: RwSem) -> None:
    sem.readers -= 1


def down_write(cpu: Cpu, sem: RwSem, label: str = "mmap_write_lock") -> Step:
    if sem.writer is not None or sem.readers:
        yield from wait_until(cpu, lambda: sem.writer is None and not sem.readers, label)
    sem.writer = cpu.id


def up_write(cpu: Cpu, sem: RwSem) -> None:
    sem.writer = None


def downgrade_write(cpu: Cpu, sem: RwSem) -> None:
    """mmap_write_downgrade()."""
    sem.writer = None
    sem.readers += 1
