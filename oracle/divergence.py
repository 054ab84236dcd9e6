"""divergence (I12): strategies run in lockstep on the same program must agree
on the observables that do not depend on the schedule.

Each strategy runs under its own schedule (their steps do not line up: one
frees inline, another in an RCU callback), so only *schedule-robust*
observables at quiescence are compared:

* ``mapped``: for every page touched by mutating operations (faults,
  munmap, madvise, mmap) of a single CPU only, each of which acts on that mm
  under every schedule, whether it is mapped at the end; the order of those
  operations is program order, whatever the schedule.  An operation whose mm
  depends on the schedule (after a switch to an mm that may be exiting, which
  is then skipped, or on a thread an exit may kill first) makes the pages it
  covers racy in every mm it may act on.  An operation that mutates pages
  through a file's rmap (``truncate``) acts on every mm that may map the
  range, from a CPU that runs none of them: the pages it may zap are racy in
  all of them.  An ``mremap`` unmaps its old range and maps at the new one
  whatever the old one held when it ran: its new range is racy; and it moves
  all of its old range or nothing (EFAULT unless one VMA covers it), so its
  old range is racy too when another CPU may change the layout there.  So is
  the range of an ``mmap`` (MAP_FIXED_NOREPLACE: EEXIST if any VMA overlaps)
  (:func:`_all_or_nothing_outcomes`).  With THP
  (``env.thp``) a page is robust only if, besides, one CPU alone touches its
  2 MiB region and its last operation there names the page with a definite
  outcome (:func:`_thp_robust`);
* ``mm state``: which address spaces exited and were freed;
* ``leaked pages``: data pages alive at the end but mapped nowhere.

Named allowances (differences that are *not* divergence): frame numbers
(allocation order differs), the timing and number of flushes, IPIs, RCU
callbacks and grace periods, and the verdicts of the absolute checks (each
strategy's violations are reported on their own, not twice).
"""

from __future__ import annotations

from impls.machine.history import Event, History
from impls.machine.page_alloc import DATA
from impls.machine.pgtable import HPAGE_PMD_NR, PAGE_SIZE, PMD_SIZE
from impls.machine.program import Op, Program

from .verdict import Violation

ALLOWANCES = ("frame numbers", "flush timing and count", "IPI count", "RCU callback timing",
              "absolute-check verdicts (reported per strategy)")

_MUTATING_RANGE = ("munmap", "madvise", "mmap", "populate")
#: kvm_access faults the page in (kvm_fault, slow GUP) on an spte miss
_MUTATING_PAGE = ("access", "kvm_fault", "kvm_access")
#: with THP a fault may map the whole 2 MiB around it (the choice is the
#: schedule's), a collapse maps all of it or nothing, and a GUP pin or a split
#: decides whether a concurrent collapse succeeds: these operations make their
#: 2 MiB regions racy unless one CPU alone touches them
_THP_MUTATING = _MUTATING_RANGE + _MUTATING_PAGE + ("gup_fast", "collapse", "split", "khugepaged",
                                                    "mremap")


#: stands for "some CPU, depending on the schedule" in the sets of CPUs that
#: may mutate a page: its presence makes the page racy
UNCERTAIN = -1


def _possible_mms(program: Program, dying: set[int]) -> tuple[dict[int, list[tuple[set, Op]]], set[int], bool]:
    """For each CPU, each operation with the set of mms it may act on.

    Statically a CPU runs the mm of its last ``switch``; but a switch to an mm
    that may have exited is skipped at run time (the CPU keeps what it ran),
    and a thread of a dying mm may be killed (the CPU runs a kernel thread).
    Returns the per-CPU sets, the mms some exit may tear down, and whether every
    exit has a single certain target."""
    out: dict[int, list[tuple[set, Op]]] = {}
    exits: set[int] = set()
    certain = True
    for cpu in range(program.cpus):
        poss: set = {program.start_of(cpu)}
        ops = []
        for op in program.ops_of(cpu):
            if op.kind == "switch":
                new: set = {op.mm}
                if op.mm is not None and op.mm in dying:
                    new |= poss | {None}
                poss = new
                continue
            if any(m in dying for m in poss if m is not None):
                poss = poss | {None}
            ops.append((set(poss), op))
            if op.kind == "exit":
                targets = {m for m in poss if m is not None}
                exits |= targets
                certain = certain and len(poss) == 1
                poss = {None}
        out[cpu] = ops
    return out, exits, certain


def _file_mappings(program: Program, per_cpu: dict) -> list[tuple[int, int, int, int, int]]:
    """Every (mm, start, end, file, pgoff) a file may be mapped at, under some
    schedule: the initial file VMAs, and every mmap of a file in each mm its
    CPU may run."""
    out = [(mm, s, s + n, f, off // PAGE_SIZE) for mm, s, n, f, off in program.file_vmas]
    for ops in per_cpu.values():
        for poss, op in ops:
            if op.kind == "mmap" and op.file is not None:
                out += [(mm, op.addr, op.addr + op.len, op.file, op.offset // PAGE_SIZE)
                        for mm in sorted(m for m in poss if m is not None)]
    # an mremap of (part of) a file mapping maps the file at its destination
    moves = [(poss, op) for ops in per_cpu.values() for poss, op in ops if op.kind == "mremap"]
    seen = set(out)
    grew = bool(moves)
    rounds = 0
    while grew and rounds < len(moves):  # a chain of moves is at most every mremap once
        grew = False
        rounds += 1
        for poss, op in moves:
            for mm, start, end, f, pgoff in list(out):
                lo, hi = max(start, op.addr), min(end, op.addr + op.len)
                if mm in poss and lo < hi:
                    new = (mm, op.new_addr + lo - op.addr, op.new_addr + hi - op.addr, f,
                           pgoff + (lo - start) // PAGE_SIZE)
                    if new not in seen:
                        seen.add(new)
                        out.append(new)
                        grew = True
    return out


def _hugetlb_ranges(program: Program) -> list[tuple[int, int]]:
    """[start, end) of every range a hugetlb file may be mapped at, in any
    mm.  MODEL: their pages are never robust: a PMD table shared between mms
    (huge_pmd_share()) maps in each of them what any sharer faulted in, and
    whether a table is shared depends on the order of the faults."""
    if "hugetlb" not in program.files:
        return []
    kinds = program.files
    out = [(s, s + n) for _, s, n, f, _ in program.file_vmas if 0 <= f < len(kinds) and kinds[f] == "hugetlb"]
    out += [(op.addr, op.addr + op.len) for op in (*program.setup, *program.ops)
            if op.kind == "mmap" and op.file is not None and 0 <= op.file < len(kinds)
            and kinds[op.file] == "hugetlb"]
    return out


def _rmap_spans(program: Program, per_cpu: dict) -> list[tuple[int, int, int]]:
    """(mm, start, stop) of the pages an rmap operation (``truncate``, a
    device's ``revoke``) may zap: in every mapping of the file that may cover
    the range."""
    maps = None
    out: list[tuple[int, int, int]] = []
    for ops in per_cpu.values():
        for _, op in ops:
            if op.kind not in ("truncate", "revoke"):
                continue
            if maps is None:
                maps = _file_mappings(program, per_cpu)
            if op.kind == "revoke":  # the whole device file
                first, last = 0, 1 << 40
            else:
                first = op.offset // PAGE_SIZE
                last = (op.offset + op.len) // PAGE_SIZE - 1
            for mm, start, end, f, pgoff in maps:
                lo, hi = max(first, pgoff), min(last, pgoff + (end - start) // PAGE_SIZE - 1)
                if f == op.file and lo <= hi:
                    out.append((mm, start + (lo - pgoff) * PAGE_SIZE, start + (hi - pgoff + 1) * PAGE_SIZE))
    return out


def _op_span(op) -> tuple[int, int] | None:
    """[start, stop) of the pages an operation names and may change the
    mapped state of, or None.  An ``mremap``'s old range ends unmapped."""
    if op.kind in _MUTATING_RANGE or op.kind == "mremap":
        return op.addr, op.addr + op.len
    if op.kind in _MUTATING_PAGE:
        start = op.addr & ~(PAGE_SIZE - 1)
        return start, start + 1
    return None


def _op_regions(op) -> list[tuple[int, int]]:
    """With THP: the [lo, hi) 2 MiB-aligned ranges an operation may change the
    mapped state of (or, for a GUP pin and a split, the outcome of a collapse
    in): an ``mremap`` both its old and its new range."""
    if op.kind not in _THP_MUTATING:
        return []
    starts = [op.addr, op.new_addr] if op.kind == "mremap" else [op.addr]
    ranged = op.kind in _MUTATING_RANGE or op.kind == "mremap"
    out = []
    for start in starts:
        hi = start + max(op.len, PAGE_SIZE) if ranged else start + PAGE_SIZE
        out.append((start & ~(PMD_SIZE - 1), (hi + PMD_SIZE - 1) & ~(PMD_SIZE - 1)))
    return out


def _op_mms(op, poss: set, dying: set[int]) -> tuple[set, bool]:
    """The mms an operation may act on and whether that is certain: a
    khugepaged step acts on the mm it names (or, if that mm may be exiting,
    maybe on none)."""
    if op.kind == "khugepaged":
        return {op.mm}, op.mm not in dying
    return poss, len(poss) == 1


def _touch_facts(program: Program) -> tuple[dict, tuple | None, set[int]]:
    """Per mm, the page spans each operation covers with the CPU that runs it
    (and ``UNCERTAIN`` when its mm, or its outcome, depends on the schedule);
    with THP, the CPUs touching each 2 MiB region and each one's last
    operation there; the mms that may exit."""
    dying: set[int] = set()
    while True:
        per_cpu, exits, _ = _possible_mms(program, dying)
        if exits <= dying:
            break
        dying |= exits
    named: dict[int, list[tuple[int, int, int]]] = {}
    regions: dict[tuple[int, int], set[int]] | None = {} if program.env.thp else None
    last: dict[tuple[int, int, int], Op] = {}  # (mm, region, cpu) -> its last op there
    for cpu, ops in per_cpu.items():
        for poss, op in ops:
            span = _op_span(op)
            regs = _op_regions(op) if regions is not None else []
            if span is None and not regs:
                continue
            # an operation whose mm depends on the schedule (a switch that may
            # be skipped, a thread that may be killed first) acts on one of
            # its possible mms or on none: the pages it covers are racy in all
            poss, certain = _op_mms(op, poss, dying)
            who = cpu if certain else UNCERTAIN
            for mm in poss:
                if mm is None:
                    continue
                lst = named.setdefault(mm, [])
                if span is not None:
                    lst.append((span[0], span[1], cpu))
                    if who != cpu:
                        lst.append((span[0], span[1], who))
                if op.kind == "mremap":
                    # the old range ends unmapped; what the new one maps depends
                    # on what the old one mapped when the move ran, which other
                    # CPUs may change: racy
                    lst.append((op.new_addr, op.new_addr + op.len, UNCERTAIN))
                for lo, hi in regs:
                    assert regions is not None  # regs is empty without THP
                    for base in range(lo, hi, PMD_SIZE):
                        regions.setdefault((mm, base), set()).update((cpu, who))
                        last[(mm, base, cpu)] = op
    for mm, start, stop in _rmap_spans(program, per_cpu):
        named.setdefault(mm, []).append((start, stop, UNCERTAIN))
    _all_or_nothing_outcomes(program, per_cpu, dying, named)
    return named, (regions, last) if regions is not None else None, dying


def _all_or_nothing_outcomes(program: Program, per_cpu: dict, dying: set[int],
                             named: dict[int, list[tuple[int, int, int]]]) -> None:
    """Operations that change a whole range or nothing, decided by the VMA
    layout of the whole range when they run: ``mremap`` fails (EFAULT) unless
    one VMA covers its old range, ``mmap`` (MAP_FIXED_NOREPLACE) fails
    (EEXIST) if any VMA overlaps its range, and with hugetlb files an
    munmap/madvise/mremap/mmap that partly covers a hugetlb VMA fails (EINVAL).
    Another CPU (or an operation whose own outcome is racy) touching any page
    of such a range may decide the outcome for every page of it, including
    pages only this CPU names (and which its later faults then map or not):
    every page of the range is then racy.  Iterated to a fixpoint, since a
    range made racy here may decide another operation."""
    hugetlb = _hugetlb_ranges(program)
    ops = []
    for cpu, lst in per_cpu.items():
        for poss, op in lst:
            if op.kind not in ("mremap", "mmap", "munmap", "madvise"):
                continue
            effect = (op.addr, op.addr + op.len)
            ranges = [effect]
            own_new = None
            if op.kind == "mremap":
                own_new = (op.new_addr, op.new_addr + op.len)
                if hugetlb:  # a hugetlb VMA another CPU maps at the destination refuses the move
                    ranges.append(own_new)
            always = any(lo < hi_ and lo_ < hi for lo_, hi_ in ranges for lo, hi in hugetlb)
            if op.kind in ("munmap", "madvise") and not always:
                continue  # page by page: each page's outcome is its own
            ops.append((cpu, _op_mms(op, poss, dying)[0], effect, ranges, own_new, always))
    marked: set[tuple[int, int]] = set()
    changed = True
    while changed:
        changed = False
        for i, (cpu, poss, effect, ranges, own_new, always) in enumerate(ops):
            for mm in poss:
                if mm is None or (i, mm) in marked:
                    continue
                spans = named.get(mm, ())
                if always or any(who != cpu and a < hi and lo < b
                                 for a, b, who in spans for lo, hi in ranges
                                 if not (who == UNCERTAIN and (a, b) == own_new)):
                    named.setdefault(mm, []).append((effect[0], effect[1], UNCERTAIN))
                    marked.add((i, mm))
                    changed = True


#: with THP, what the last operation on a 2 MiB region leaves for the pages it
#: names, whatever the fault path was: mapped (a fault) or not (a zap)
_THP_DEFINITE = ("access", "populate", "kvm_fault", "kvm_access", "munmap", "madvise")


def _thp_robust(thp: tuple[dict, dict], mm: int, va: int) -> bool:
    """With THP, a page is robust only if one CPU alone touches its 2 MiB
    region and that CPU's last operation there names the page with a definite
    outcome: a fault may map the whole region or only its page (a choice of
    the schedule), a collapse maps all of it or nothing, a split and a GUP
    pin decide whether a concurrent collapse can."""
    regions, last = thp
    base = va & ~(PMD_SIZE - 1)
    owners = regions.get((mm, base), ())
    if len(owners) != 1 or UNCERTAIN in owners:
        return False
    op = last.get((mm, base, next(iter(owners))))
    if op is None or op.kind not in _THP_DEFINITE:
        return False
    span = _op_span(op)
    return span is not None and span[0] <= va < span[1] and (va - span[0]) % PAGE_SIZE == 0


def robust_pages(program: Program) -> dict[tuple[int, int], bool]:
    """(mm, page va) -> True if only one CPU's operations may mutate it.

    MODEL: the mm an operation acts on is over-approximated statically (see
    ``_possible_mms``, iterated to a fixpoint); pages of an mm that may exit are
    never robust; huge ranges (over 4096 pages) are left out.  With THP see
    :func:`_thp_robust`."""
    named, thp, dying = _touch_facts(program)
    touched: dict[tuple[int, int], set[int]] = {}
    for mm, spans in named.items():
        for start, stop, who in spans:
            pages = range(start, stop, PAGE_SIZE)
            if len(pages) > 4096:  # MODEL: huge ranges are left out
                continue
            for va in pages:
                touched.setdefault((mm, va), set()).add(who)
    out = {}
    shared = _hugetlb_ranges(program)
    for (mm, va), cpus in touched.items():
        ok = len(cpus) == 1 and UNCERTAIN not in cpus and mm not in dying
        if ok and shared and any(lo <= va < hi for lo, hi in shared):
            ok = False
        if ok and thp is not None:
            ok = _thp_robust(thp, mm, va)
        out[(mm, va)] = ok
    return out


def certain_exits(program: Program) -> bool:
    """Whether which mms exit is the same under every schedule."""
    dying: set[int] = set()
    while True:
        _, exits, certain = _possible_mms(program, dying)
        if exits <= dying:
            return certain and sum(1 for op in program.ops if op.kind == "exit") <= 1
        dying |= exits


def observables(history: History, program: Program) -> dict[str, object] | None:
    final = _final(history)
    if final is None:
        return None
    robust = robust_pages(program)
    exits_certain = certain_exits(program)
    obs: dict[str, object] = {}
    for mm in final.a["mms"]:
        mapped = _mapped_pages(mm)
        for (mmid, va), ok in robust.items():
            if ok and mmid == mm["id"]:
                obs[f"mm{mmid} {va:#x} mapped"] = va in mapped
        if exits_certain:
            obs[f"mm{mm['id']} exited"] = mm["exited"]
    obs["leaked pages"] = _leaked(final)
    return obs


class _Touches:
    """The facts :func:`robust_pages` materialises, queried one page at a time.

    A 2 MiB munmap touches 512 pages, so building ``robust_pages()`` and the
    ``observables()`` dict costs thousands of entries per history, while only
    the pages mapped in one history and not in the other can differ.  This
    keeps, per mm, the page ranges each CPU's mutating operations cover (with
    the same rules as robust_pages(): the possible mms of each operation, dying
    mms never robust, huge ranges ignored) and answers ``robust(mm, va)`` on
    demand.
    """

    def __init__(self, program: Program) -> None:
        named, self.thp, self.dying = _touch_facts(program)
        self.shared = _hugetlb_ranges(program)
        self.spans = {mm: [(a, b, c) for a, b, c in spans if len(range(a, b, PAGE_SIZE)) <= 4096]
                      for mm, spans in named.items()}

    def robust(self, mm: int, va: int) -> bool:
        """``robust_pages(program).get((mm, va), False)``."""
        if mm in self.dying:
            return False
        if self.shared and any(lo <= va < hi for lo, hi in self.shared):
            return False
        cpus = {cpu for start, stop, cpu in self.spans.get(mm, ())
                if start <= va < stop and (va - start) % PAGE_SIZE == 0}
        if len(cpus) != 1 or UNCERTAIN in cpus:
            return False
        return self.thp is None or _thp_robust(self.thp, mm, va)


def _differences(bh: History, h: History, touches: _Touches, program: Program,
                 exits_compared: bool) -> list[tuple[str, object, object]] | None:
    """The keys on which ``observables()`` of ``bh`` and ``h`` differ, with both
    values, in key order; None if either has no ``final`` event.  Only pages in
    the symmetric difference of the two mappings are looked at."""
    bf, f = _final(bh), _final(h)
    if bf is None or f is None:
        return None
    bmms, mms = bf.a["mms"], f.a["mms"]
    if [m["id"] for m in bmms] != [m["id"] for m in mms]:
        # not two runs of the same program: compare the full observables
        bobs, obs = observables(bh, program), observables(h, program)
        assert bobs is not None and obs is not None  # both have a final event
        return [(k, bobs.get(k), obs.get(k)) for k in sorted(set(bobs) | set(obs))
                if bobs.get(k) != obs.get(k)]
    out: list[tuple[str, object, object]] = []
    for bmm, mm in zip(bmms, mms, strict=True):
        mmid = mm["id"]
        bmapped = _mapped_pages(bmm)
        mapped = _mapped_pages(mm)
        for va in bmapped ^ mapped:
            if touches.robust(mmid, va):
                out.append((f"mm{mmid} {va:#x} mapped", va in bmapped, va in mapped))
        if exits_compared and bmm["exited"] != mm["exited"]:
            out.append((f"mm{mmid} exited", bmm["exited"], mm["exited"]))
    bleaked, leaked = _leaked(bf), _leaked(f)
    if bleaked != leaked:
        out.append(("leaked pages", bleaked, leaked))
    out.sort(key=lambda d: d[0])
    return out


def _final(history: History) -> Event | None:
    events = history.events
    for i in range(len(events) - 1, -1, -1):  # (not reversed(): mypyc 2.4 crashes on it)
        if events[i].kind == "final":
            return events[i]
    return None


def _mapped_pages(mm: dict) -> set[int]:
    """The page VAs an mm maps at the end, the 512 pages of each huge PMD
    included."""
    out = {va for va, _ in mm["mapping"]}
    for va, _ in mm.get("huge", ()):
        out.update(range(va, va + HPAGE_PMD_NR * PAGE_SIZE, PAGE_SIZE))
    return out


def _leaked(final: Event) -> int:
    all_mapped = {pg for mm in final.a["mms"] for _, pg in (*mm["mapping"], *mm.get("huge", ()))}
    return sum(1 for f in final.a["frames"]
               if f[2] == DATA and (f[0], f[1]) not in all_mapped and not _cached(f))


def _cached(frame: tuple) -> bool:
    """A page a file's page cache holds is not leaked, mapped or not."""
    return len(frame) > 9 and bool(frame[9])


def compare(histories: list[History], program: Program) -> list[Violation]:
    """Pairwise comparison against the first strategy that reached quiescence:
    every key on which the two ``observables()`` differ, in key order."""
    out: list[Violation] = []
    touches = _Touches(program)
    exits_certain = certain_exits(program)
    base = None
    for h in histories:
        if _final(h) is None:
            continue
        if base is None:
            base = h
            continue
        bh = base
        for key, bval, val in _differences(bh, h, touches, program, exits_certain) or ():
            out.append(Violation(
                "divergence", h.strategy,
                f"{bh.strategy} and {h.strategy} disagree on '{key}': {bval} vs {val}",
                (), {"observable": key, "strategies": (bh.strategy, h.strategy),
                     "values": (bval, val)}))
    return out
