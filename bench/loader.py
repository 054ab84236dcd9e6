"""Litmus loader figures: CPU seconds to read hostile and large inputs.

Prints, for each input, the median CPU time (process_time, over --repeat
runs) of fuzz.corpus.parse() with its libyaml loader and, side by side in the
same process, with PyYAML's pure-Python SafeLoader in its place (the ratio is
what the C parser buys); then the CPU time of a whole `shootdown run` of the
alias bomb in a child process (its exit status must be 2).

    .venv/bin/python bench/loader.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz import corpus  # noqa: E402


class _PurePython(yaml.SafeLoader):
    """fuzz.corpus._Loader's behaviour on the pure-Python parser."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception:  # noqa: BLE001
            raise yaml.constructor.ConstructorError(None, None, "bad value", node.start_mark) from None


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["shootdown: 1", "a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines + ["ops: []"]) + "\n"


def ops_file(n: int) -> str:
    ops = "".join(f"  - {{cpu: {i % 2}, op: access, addr: 0x200000, write: true}}\n" for i in range(n))
    return "shootdown: 1\nvmas:\n  - {mm: 0, start: 0x200000, len: 0x200000}\nops:\n" + ops


INPUTS = {
    "alias bomb (9 levels x 9)": alias_bomb(),
    "20,000 operations": ops_file(20_000),
    "10 MB title": "shootdown: 1\ntitle: " + "x" * 10_000_000 + "\nops: []\n",
}


def cpu_of(text: str) -> float:
    t0 = time.process_time()
    try:
        corpus.parse(text, "bench.yaml")
    except corpus.CorpusError:
        pass
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    fast = corpus._Loader
    print(f"libyaml available: {yaml.__with_libyaml__}; median of {args.repeat} runs, CPU seconds")
    print(f"{'input':<28} {'corpus.parse':>13} {'pure-Python':>12} {'ratio':>6}")
    for name, text in INPUTS.items():
        c_times, py_times = [], []
        for _ in range(args.repeat):
            corpus._Loader = fast
            c_times.append(cpu_of(text))
            if "bomb" not in name:  # the pure-Python parser refuses it just as fast (the events pass)
                corpus._Loader = _PurePython
                py_times.append(cpu_of(text))
        corpus._Loader = fast
        c, py = statistics.median(c_times), statistics.median(py_times) if py_times else None
        ratio = f"{py / c:5.1f}x" if py else "-"
        print(f"{name:<28} {c:13.3f} {py if py is not None else float('nan'):12.3f} {ratio:>6}")
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "bomb.yaml"
        f.write_text(alias_bomb())
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run([sys.executable, "-m", "fuzz", "run", str(f)], capture_output=True, text=True, cwd=ROOT)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(f"shootdown run bomb.yaml: exit {p.returncode}, {cpu:.2f} CPU s for the whole process "
              f"(interpreter start included): {p.stderr.strip()[:100]}")


if __name__ == "__main__":
    main()
