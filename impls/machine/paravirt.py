"""arch/x86/include/asm/paravirt.h: the machine's calls into the platform's
``pv_ops`` hooks, with the bare-metal behaviour when a platform leaves a hook
out.  Strategies call ``paravirt_release_pte()`` & co. from their
``pte_free_tlb()``, as ``___pte_free_tlb()`` does."""

from __future__ import annotations

from .cpu import Cpu, Mm
from .page_alloc import Frame


def paravirt_release_pte(cpu: Cpu, table: Frame) -> None:
    hook = cpu.m.P.release_pte
    if hook is not None:
        hook(cpu, table)


def paravirt_release_pmd(cpu: Cpu, table: Frame) -> None:
    hook = cpu.m.P.release_pmd
    if hook is not None:
        hook(cpu, table)


def paravirt_release_pud(cpu: Cpu, table: Frame) -> None:
    hook = cpu.m.P.release_pud
    if hook is not None:
        hook(cpu, table)


def paravirt_alloc(cpu: Cpu, mm: Mm, table: Frame) -> None:
    """paravirt_alloc_pte()/_pmd()/_pud() for a new table of any level."""
    P = cpu.m.P
    hook = {1: P.alloc_pte, 2: P.alloc_pmd, 3: P.alloc_pud}.get(table.level)
    if hook is not None:
        hook(cpu, mm, table)


def arch_enter_lazy_mmu_mode(cpu: Cpu) -> None:
    cpu.lazy_mmu = True
    hook = cpu.m.P.enter_lazy_mmu
    if hook is not None:
        hook(cpu)


def arch_leave_lazy_mmu_mode(cpu: Cpu) -> None:
    hook = cpu.m.P.leave_lazy_mmu
    if hook is not None:
        hook(cpu)
    cpu.lazy_mmu = False
