"""How a planted bug is built: the correct module with one or two functions
replaced, and nothing else changed.

``rebind(correct, globals())`` at the end of a mutant file copies every
function of the correct strategy or platform module into the mutant's
namespace, re-bound to that namespace, so that calls *between* the correct
functions reach the mutant's replacement (``tlb_table_flush()`` calls the
mutant's ``tlb_needs_table_invalidate()``, not the correct one).  Names the
mutant defines itself are kept; ``SAFE_ON`` and ``KERNEL`` are not inherited
(a planted bug claims to be safe nowhere).  The correct module itself is
never modified.

A mutant file is loaded by path (like a user's strategy), so it loads this
helper by path too::

    load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
"""

from __future__ import annotations

from types import FunctionType, ModuleType
from typing import Any

NOT_INHERITED = frozenset({"SAFE_ON", "KERNEL", "NAME", "PLANTED"})


def _is_module_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def rebind(correct: ModuleType, ns: dict[str, Any]) -> None:
    for name, obj in vars(correct).items():
        if _is_module_dunder(name) or name in NOT_INHERITED or name in ns:
            continue
        if isinstance(obj, FunctionType) and obj.__module__ == correct.__name__:
            fn = FunctionType(obj.__code__, ns, obj.__name__, obj.__defaults__, obj.__closure__)
            fn.__kwdefaults__ = obj.__kwdefaults__
            fn.__doc__ = obj.__doc__
            fn.__qualname__ = obj.__qualname__
            fn.__module__ = ns.get("__name__", correct.__name__)
            fn.__dict__.update(obj.__dict__)
            ns[name] = fn
        else:
            ns[name] = obj
    ns.setdefault("SAFE_ON", ())
