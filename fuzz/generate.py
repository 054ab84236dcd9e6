"""Program generation, valid by construction, for every engine.

The generator walks an abstract state forward as it emits operations (which
VMA slots are mapped in which mm, which pages were touched, what each CPU
runs), so it unmaps what is mapped, walks what exists and switches to mms that
are alive: no generate-then-filter.  Interleaving is left to the schedule, so
at run time an operation may find the world changed (that is the point); the
machine handles every operation in every state.

Every decision goes through a :class:`Draw`, so the same code serves the
random and PCT engines (:class:`RandomDraw`), Hypothesis (which shrinks what it
drew) and atheris (:class:`BytesDraw`, one byte per decision).

With THP (``GenConfig.thp``) a fault may map a whole slot with a huge PMD;
``collapse`` and ``split`` target slots with touched pages, kernel-thread
CPUs run ``khugepaged`` steps on a live mm's slots, and half the
``madvise`` calls zap a few pages only, which splits a huge PMD first.

Address layout: each mm has VMA *slots* chosen so that unmapping them frees
tables at every level: two neighbouring 2 MiB slots sharing a PMD table (PTE
tables freed, floor/ceiling exercised), one slot alone in its 1 GiB (its PMD
table is freed too) and one alone in its 512 GiB (its PUD table too).  Only
the first few pages of a slot are touched, so programs stay small.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from impls.machine.choices import by_value
from impls.machine.pgtable import PAGE_SIZE, PMD_SIZE, PUD_SIZE
from impls.machine.program import Env, Op, Program

T = TypeVar("T")

#: (start, len) of the VMA slots of every mm
SLOTS: tuple[tuple[int, int], ...] = (
    (0x200000, PMD_SIZE),          # PTE table 1 of the first PMD table
    (0x400000, PMD_SIZE),          # its neighbour, same PMD table
    (0x40000000, PMD_SIZE),        # alone in its 1 GiB: PMD table freed with it
    (0x8000000000, PMD_SIZE),      # alone in its 512 GiB: PUD table freed with it
)
#: (start, len) of the file-mapping slots (slot ids len(SLOTS), ...), and the
#: kind of file each maps (the program's first file of that kind)
FILE_SLOTS: tuple[tuple[int, int], ...] = (
    (0x600000, PMD_SIZE),          # next to slots 0 and 1: the same PMD table
    (0x80000000, PMD_SIZE),        # alone in its GiB
    (0xc0000000, PMD_SIZE),        # alone in its GiB: a device's VM_PFNMAP mapping
    (0x4000000000, PUD_SIZE),      # a whole PUD-aligned GiB of a hugetlbfs file: every mm maps it
                                   # at the same offset, so its PMD table can be shared
)
FILE_SLOT_KINDS = ("shmem", "shmem", "device", "hugetlb")
#: the hugetlb slot (a page of it is a 2 MiB huge page)
HUGETLB_SLOT = len(SLOTS) + FILE_SLOT_KINDS.index("hugetlb")
ALL_SLOTS = SLOTS + FILE_SLOTS
#: slots whose next 2 MiB is never mapped: an mremap may land a page past them
ISOLATED_SLOTS = (2, 3, len(SLOTS) + 1)
PAGES_PER_SLOT = 3


class Draw(Protocol):
    def int(self, lo: int, hi: int) -> int: ...       # inclusive bounds
    def bool(self, p: float) -> bool: ...
    def weighted(self, items: Sequence[tuple[T, float]]) -> T: ...


class RandomDraw:
    """Decisions from a private seeded RNG."""

    def __init__(self, rng: random.Random | int) -> None:
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        # rng._randbelow(n) is what rng.randint()/randrange() draw from, for n > 0
        self._randbelow: Callable[[int], int] = self.rng._randbelow  # type: ignore[attr-defined]

    def int(self, lo: int, hi: int) -> int:
        if hi < lo:
            return self.rng.randint(lo, hi)  # raises "empty range"
        return lo + self._randbelow(hi - lo + 1)  # rng.randint(lo, hi)

    def bool(self, p: float) -> bool:
        return self.rng.random() < p

    def weighted(self, items):
        total = sum([w for _, w in items])
        x = self.rng.random() * total
        for item, w in items:
            x -= w
            if x < 0:
                return item
        return items[-1][0]


class BytesDraw:
    """Decisions decoded from a byte string (atheris); zeros once exhausted,
    so every byte string decodes to some program."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def _byte(self) -> int:
        if self.i >= len(self.data):
            return 0
        b = self.data[self.i]
        self.i += 1
        return b

    def int(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        if span <= 1:
            return lo
        v = self._byte()
        if span > 256:
            v = v << 8 | self._byte()
        return lo + v % span

    def bool(self, p: float) -> bool:
        return self._byte() < int(256 * p)

    def weighted(self, items):
        total = sum(w for _, w in items)
        x = self._byte() / 256 * total
        for item, w in items:
            x -= w
            if x < 0:
                return item
        return items[-1][0]


@dataclass(frozen=True)
class GenConfig:
    """What to generate: the environment (platform and knobs) and the size."""

    platform: str = "native"
    cpus: tuple[int, int] = (2, 4)
    mms: tuple[int, int] = (1, 2)
    length: int = 32
    pt_reclaim: str = "off"
    kvm: bool = False
    iommu: bool = False
    #: whether CPUs may go lazy-TLB (a switch to a kernel thread, an exit,
    #: which leaves the exiting CPU and the killed threads' CPUs lazy on the
    #: dying mm): the primer's E8 reader class, kept out of E1
    lazy_tlb: bool = True
    #: transparent huge pages (Env.thp): huge faults, and the collapse,
    #: khugepaged and split operations; partial madvise/munmap that split
    thp: bool = False
    #: relative weight of each operation kind (0 disables it)
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    #: the files every program declares (kinds of impls.machine.program.FILE_KINDS);
    #: file 0 is what the file slots map
    files: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return by_value(self)  # (pickled by value: the compiled build)


DEFAULT_WEIGHTS: dict[str, float] = {
    "gup_fast": 6, "munmap": 4, "mmap": 3, "access": 6, "populate": 1, "pte_walk": 2,
    "madvise": 2, "spec_walk": 3, "switch": 2, "exit": 0.3,
    "kvm_fault": 2, "kvm_access": 2, "iommu_access": 2,
    "truncate": 0, "mremap": 0, "revoke": 0,
    # THP operations: only where the environment enables THP (fuzz/envs.py)
    "collapse": 0, "khugepaged": 0, "split": 0,
}
THP_OPS = ("collapse", "khugepaged", "split")


@dataclass
class _State:
    """The abstract state the generator walks forward."""

    mapped: dict[int, set[int]]                 # mm -> mapped slot indexes
    touched: dict[int, set[tuple[int, int]]]    # mm -> (slot, page) touched
    running: list[int | None]                   # cpu -> mm (None: kernel thread)
    alive: set[int]
    #: (mm, slot) -> bytes the slot's VMA starts after the slot's address (an
    #: mremap to a page-misaligned destination, which moves PTEs one by one)
    shift: dict[tuple[int | None, int], int] = field(default_factory=dict)
    #: THP: cpu -> (mm, the operation it runs next): a zap right after a
    #: collapse, which frees the table the collapse deposited
    follow: dict[int, tuple[int, Op]] = field(default_factory=dict)
    #: THP: mm -> the slot last collapsed or split, which walkers aim at
    hot: dict[int, int] = field(default_factory=dict)
    #: the index of the program's hugetlb file, if it has one
    hugetlb_file: int = 0
    #: hugetlb: mm -> {huge page of the slot munmapped alone: whether an anonymous VMA
    #: was mapped in the hole} (the hole's PMD entry is in the slot's PMD table)
    holes: dict[int, dict[int, bool]] = field(default_factory=dict)


def op_weights(cfg: GenConfig) -> dict[str, float]:
    """The operation weights for this configuration: only the operations its
    machine has (no KVM/IOMMU ops without them), madvise halved without
    PT_RECLAIM (it then frees no table)."""
    weights = {k: w for k, w in cfg.weights.items() if w > 0}
    if not cfg.kvm:
        weights.pop("kvm_fault", None)
        weights.pop("kvm_access", None)
    if not cfg.iommu:
        weights.pop("iommu_access", None)
    if cfg.pt_reclaim == "off":
        weights["madvise"] = weights.get("madvise", 0) * 0.5
    if not cfg.lazy_tlb:
        weights.pop("exit", None)  # exit_mm() leaves CPUs lazy on the dying mm
    if "shmem" not in cfg.files:
        weights.pop("truncate", None)
    if "device" not in cfg.files:
        weights.pop("revoke", None)
    if not cfg.thp:
        for k in THP_OPS:
            weights.pop(k, None)
    return weights


def generate(draw: Draw, cfg: GenConfig) -> Program:
    cpus = draw.int(*cfg.cpus)
    mms = draw.int(*cfg.mms)
    env = Env(cfg.pt_reclaim, cfg.kvm, cfg.iommu, False, thp=cfg.thp)
    st = _State({m: set() for m in range(mms)}, {m: set() for m in range(mms)},
                [], set(range(mms)))
    start: list[int | None] = []
    # with THP, kernel threads are where khugepaged runs
    kthread_p = 0.3 if cfg.thp else 0.15
    for c in range(cpus):
        start.append(None if (c > 0 and draw.bool(kthread_p)) else draw.int(0, mms - 1))
    st.running = list(start)
    if "hugetlb" in cfg.files:
        st.hugetlb_file = cfg.files.index("hugetlb")
    vmas: list[tuple[int, int, int]] = []
    file_vmas: list[tuple[int, int, int, int, int]] = []
    for m in range(mms):
        for i, (s, n) in enumerate(SLOTS):
            if i == 0 or draw.bool(0.6):
                vmas.append((m, s, n))
                st.mapped[m].add(i)
        if cfg.files:
            for j, (s, n) in enumerate(FILE_SLOTS):
                if FILE_SLOT_KINDS[j] in cfg.files and draw.bool(0.7):
                    file_vmas.append((m, s, n, cfg.files.index(FILE_SLOT_KINDS[j]), 0))
                    st.mapped[m].add(len(SLOTS) + j)
    setup: list[Op] = []
    for m in range(mms):
        cpu = next((c for c in range(cpus) if start[c] == m), None)
        if cpu is None:
            continue
        for i in sorted(st.mapped[m]):
            if draw.bool(0.5):
                pages = draw.int(1, 2)
                setup.append(_op(cpu, "populate", addr=ALL_SLOTS[i][0], len=pages * PAGE_SIZE))
                st.touched[m].update((i, p) for p in range(pages))
    ops: list[Op] = []
    weights = op_weights(cfg)
    for _ in range(cfg.length):
        cpu = draw.int(0, cpus - 1)
        op = _gen_op(draw, st, cpu, mms, weights, cfg.lazy_tlb, cfg.files, cfg.thp)
        if op is not None:
            ops.append(op)
    return Program(cpus=cpus, mms=mms, platform=cfg.platform, start=tuple(start), vmas=tuple(vmas),
                   setup=tuple(setup), ops=tuple(ops), env=env, files=tuple(cfg.files),
                   file_vmas=tuple(file_vmas))


#: the operations generated so far, by value (see _op())
_ops: dict[tuple, Op] = {}


def _op(cpu: int, kind: str, **kw: Any) -> Op:
    """``Op(cpu, kind, **kw)``, shared: an Op is an immutable value, and a
    generated program draws its operations from a small set (a few CPUs,
    slots and pages), so most come back program after program; building a
    frozen dataclass costs several times a lookup.  (The values are ints, and
    bools for ``write``, as drawn: a key never mixes ``True`` and ``1``.)"""
    key = (cpu, kind, *kw.items())
    op = _ops.get(key)
    if op is None:
        if len(_ops) > 100_000:
            _ops.clear()
        op = _ops[key] = Op(cpu, kind, **kw)
    return op


def _page_addr(slot: int, page: int, st: _State | None = None, mm: int | None = None) -> int:
    if slot == HUGETLB_SLOT:
        return ALL_SLOTS[slot][0] + page * PMD_SIZE
    shift = st.shift.get((mm, slot), 0) if st is not None else 0
    return ALL_SLOTS[slot][0] + shift + page * PAGE_SIZE


def _gen_op(draw: Draw, st: _State, cpu: int, mms: int, weights: dict[str, float],
            lazy_tlb: bool = True, files: tuple[str, ...] = (), thp: bool = False) -> Op | None:
    mm = st.running[cpu]
    if thp and cpu in st.follow:
        fmm, fop = st.follow.pop(cpu)
        if fmm == mm and mm in st.alive and draw.bool(0.9):
            return fop
    if mm is None or mm not in st.alive:
        alive = sorted(st.alive)
        if not alive:
            return _op(cpu, "spec_walk", addr=_page_addr(0, 0))
        if thp and weights.get("khugepaged", 0) > 0 and draw.bool(0.5):
            # this kernel thread is khugepaged: scan a slot of a live mm
            target = alive[draw.int(0, len(alive) - 1)]
            slot = _target_slot(draw, st, target)
            return _op(cpu, "khugepaged", addr=SLOTS[slot][0], mm=target)
        # a kernel thread can only switch back to a user task, or walk speculatively
        if draw.bool(0.7):
            target = alive[draw.int(0, len(alive) - 1)]
            st.running[cpu] = target
            return _op(cpu, "switch", mm=target)
        slot = draw.int(0, len(SLOTS) - 1)
        return _op(cpu, "spec_walk", addr=_page_addr(slot, draw.int(0, PAGES_PER_SLOT - 1)))
    kind = draw.weighted(list(weights.items()))
    mapped = sorted(st.mapped[mm])
    if "hugetlb" in files and kind in _HUGETLB_AIMED:
        # hugetlb: walkers and zaps meet on the shared slot (every mm maps it at
        # the same place, so a munmap or madvise unshares the PMD table another
        # mm's walker may be in)
        op = _hugetlb_op(draw, st, cpu, mm, kind)
        if op is not None:
            return op
    if kind == "truncate":
        # a hole in file 0's first pages, from whatever this CPU runs: every mm
        # mapping them is zapped through the rmap
        first = draw.int(0, PAGES_PER_SLOT - 1)
        n = draw.int(1, PAGES_PER_SLOT - first)
        for m in st.touched:
            st.touched[m] = {t for t in st.touched[m]
                             if not (t[0] >= len(SLOTS) and first <= t[1] < first + n)}
        return _op(cpu, "truncate", file=files.index("shmem"), offset=first * PAGE_SIZE, len=n * PAGE_SIZE)
    if kind == "revoke":
        # the device's driver revokes every mapping of it, in every mm
        dev = len(SLOTS) + FILE_SLOT_KINDS.index("device")
        for m in st.touched:
            st.touched[m] = {t for t in st.touched[m] if t[0] != dev}
        return _op(cpu, "revoke", file=files.index("device"))
    if kind in ("collapse", "split"):
        slot = _target_slot(draw, st, mm)
        st.hot[mm] = slot
        if kind == "collapse" and draw.bool(0.6):
            # then zap the huge PMD: zap_huge_pmd() frees the deposited table
            st.follow[cpu] = (mm, _op(cpu, "madvise", addr=SLOTS[slot][0], len=SLOTS[slot][1]))
        return _op(cpu, kind, addr=_page_addr(slot, draw.int(0, PAGES_PER_SLOT - 1)))
    if kind == "khugepaged":
        return None  # only kernel threads run khugepaged (above)
    if kind in ("gup_fast", "pte_walk", "kvm_fault", "kvm_access", "iommu_access", "spec_walk"):
        touched = sorted(st.touched[mm])
        if thp and mm in st.hot and draw.bool(0.7):
            slot, page = st.hot[mm], draw.int(0, PAGES_PER_SLOT - 1)
        elif touched and draw.bool(0.85):
            slot, page = touched[draw.int(0, len(touched) - 1)]
        elif mapped:
            slot, page = mapped[draw.int(0, len(mapped) - 1)], draw.int(0, PAGES_PER_SLOT - 1)
        else:
            slot, page = 0, 0
        if kind == "kvm_fault":
            st.touched[mm].add((slot, page))
        return _op(cpu, kind, addr=_page_addr(slot, page, st, mm), write=kind == "gup_fast" and draw.bool(0.5))
    if kind in ("access", "populate"):
        if not mapped:
            return _op(cpu, "mmap", addr=SLOTS[0][0], len=SLOTS[0][1]) if _map(st, mm, 0) else None
        slot = mapped[draw.int(0, len(mapped) - 1)]
        if kind == "populate":
            n = draw.int(1, PAGES_PER_SLOT)
            st.touched[mm].update((slot, p) for p in range(n))
            return _op(cpu, "populate", addr=_page_addr(slot, 0, st, mm), len=n * PAGE_SIZE)
        page = draw.int(0, PAGES_PER_SLOT - 1)
        st.touched[mm].add((slot, page))
        return _op(cpu, "access", addr=_page_addr(slot, page, st, mm), write=draw.bool(0.7))
    if kind == "munmap":
        if not mapped:
            return None
        slot = mapped[draw.int(0, len(mapped) - 1)]
        st.mapped[mm].discard(slot)
        st.touched[mm] = {t for t in st.touched[mm] if t[0] != slot}
        # sometimes unmap the neighbouring slot too (one call, several VMAs)
        if slot == 0 and 1 in st.mapped[mm] and draw.bool(0.3):
            st.mapped[mm].discard(1)
            st.touched[mm] = {t for t in st.touched[mm] if t[0] != 1}
            return _op(cpu, "munmap", addr=SLOTS[0][0], len=2 * PMD_SIZE)
        return _op(cpu, "munmap", addr=_page_addr(slot, 0, st, mm), len=ALL_SLOTS[slot][1])
    if kind == "mmap":
        free = [i for i in range(len(ALL_SLOTS) if files else len(SLOTS)) if i not in st.mapped[mm]
                and (i < len(SLOTS) or FILE_SLOT_KINDS[i - len(SLOTS)] in files)]
        if not free:
            return None
        slot = free[draw.int(0, len(free) - 1)]
        _map(st, mm, slot)
        st.shift.pop((mm, slot), None)
        if slot >= len(SLOTS):
            fid = files.index(FILE_SLOT_KINDS[slot - len(SLOTS)])
            return _op(cpu, "mmap", addr=ALL_SLOTS[slot][0], len=ALL_SLOTS[slot][1], file=fid, offset=0)
        return _op(cpu, "mmap", addr=SLOTS[slot][0], len=SLOTS[slot][1])
    if kind == "madvise":
        if not mapped:
            return None
        slot = mapped[draw.int(0, len(mapped) - 1)]
        if thp and draw.bool(0.5):
            # part of a huge page: zap_pmd_range() splits it first
            first = draw.int(0, PAGES_PER_SLOT - 1)
            n = draw.int(1, PAGES_PER_SLOT - first)
            st.touched[mm] = {t for t in st.touched[mm] if not (t[0] == slot and first <= t[1] < first + n)}
            return _op(cpu, "madvise", addr=_page_addr(slot, first), len=n * PAGE_SIZE)
        st.touched[mm] = {t for t in st.touched[mm] if t[0] != slot}
        return _op(cpu, "madvise", addr=_page_addr(slot, 0, st, mm), len=ALL_SLOTS[slot][1])
    if kind == "mremap":
        # move a whole slot's VMA to a free slot of the same kind: PMD-aligned,
        # whole PTE tables move (move_normal_pmd()); a page past an isolated
        # slot, PTEs move one by one (move_ptes()) into two new PTE tables
        if not mapped:
            return None
        src = mapped[draw.int(0, len(mapped) - 1)]
        if src >= len(SLOTS):  # a file mapping moves to a free slot of the same file
            kinds = [t for t in range(len(SLOTS), len(ALL_SLOTS))
                     if FILE_SLOT_KINDS[t - len(SLOTS)] == FILE_SLOT_KINDS[src - len(SLOTS)]]
        else:
            kinds = list(range(len(SLOTS)))
        free = [t for t in kinds if t not in st.mapped[mm]]
        if not free:
            return None
        dst = free[draw.int(0, len(free) - 1)]
        shift = PAGE_SIZE if dst in ISOLATED_SLOTS and draw.bool(0.5) else 0
        old = _page_addr(src, 0, st, mm)
        st.mapped[mm].discard(src)
        st.mapped[mm].add(dst)
        st.shift.pop((mm, src), None)
        if shift:
            st.shift[(mm, dst)] = shift
        st.touched[mm] = {(dst if x == src else x, pg) for x, pg in st.touched[mm] if x != dst}
        return _op(cpu, "mremap", addr=old, len=ALL_SLOTS[src][1], new_addr=ALL_SLOTS[dst][0] + shift)
    if kind == "switch":
        options: list[int | None] = [m for m in sorted(st.alive) if m != mm]
        if lazy_tlb:
            options.insert(0, None)
        if not options:
            return None
        to_mm = options[draw.int(0, len(options) - 1)]
        st.running[cpu] = to_mm
        return _op(cpu, "switch", mm=to_mm)
    if kind == "exit":
        st.alive.discard(mm)
        for c in range(len(st.running)):
            if st.running[c] == mm:
                st.running[c] = None
        return _op(cpu, "exit")
    return None


_HUGETLB_AIMED = ("gup_fast", "access", "spec_walk", "munmap", "madvise", "mmap", "populate")


def _hugetlb_op(draw: Draw, st: _State, cpu: int, mm: int, kind: str) -> Op | None:
    """An operation on the hugetlb slot, with probability 0.6 (None: the
    caller draws an ordinary one)."""
    if not draw.bool(0.6):
        return None
    slot = HUGETLB_SLOT
    base, length = ALL_SLOTS[slot]
    mapped = slot in st.mapped[mm]
    holes = st.holes.setdefault(mm, {})
    if kind == "mmap":
        if mapped:
            # an anonymous VMA in a hole of the hugetlb mapping: its PTE table goes into
            # the (no longer shared) PMD table, where a GUP-fast of a former sharer that
            # read the old PUD entry would find it (1013af4f585f)
            empty = [p for p, filled in holes.items() if not filled]
            if not empty:
                return None
            page = empty[0]
            holes[page] = True
            return Op(cpu, "mmap", addr=_page_addr(slot, page), len=PMD_SIZE)
        st.mapped[mm].add(slot)
        return Op(cpu, "mmap", addr=base, len=length, file=_hugetlb_file(st), offset=0)
    if not mapped and kind != "spec_walk" and kind != "gup_fast":
        return None
    if kind in ("munmap", "madvise"):
        if kind == "munmap" and 1 not in holes and draw.bool(0.35):
            # one huge page alone: the VMA is split, the rest of the PMD table stays
            holes[1] = False
            st.touched[mm].discard((slot, 1))
            return Op(cpu, "munmap", addr=_page_addr(slot, 1), len=PMD_SIZE)
        if kind == "munmap":
            st.mapped[mm].discard(slot)
            holes.clear()
        st.touched[mm] = {t for t in st.touched[mm] if t[0] != slot}
        return Op(cpu, kind, addr=base, len=length)
    page = draw.int(0, PAGES_PER_SLOT - 1)
    if kind == "populate":
        st.touched[mm].add((slot, 0))
        return Op(cpu, "populate", addr=base, len=PAGE_SIZE)
    if kind == "access":
        st.touched[mm].add((slot, page))
    return Op(cpu, kind, addr=_page_addr(slot, page), write=kind != "spec_walk" and draw.bool(0.5))


def _hugetlb_file(st: _State) -> int:
    return st.hugetlb_file


def _target_slot(draw: Draw, st: _State, mm: int) -> int:
    """A slot to collapse or split: one with touched pages, mostly."""
    touched = sorted({s for s, _ in st.touched[mm]})
    if touched and draw.bool(0.85):
        return touched[draw.int(0, len(touched) - 1)]
    mapped = sorted(st.mapped[mm])
    return mapped[draw.int(0, len(mapped) - 1)] if mapped else 0


def _map(st: _State, mm: int, slot: int) -> bool:
    if slot in st.mapped[mm]:
        return False
    st.mapped[mm].add(slot)
    return True
