"""Mutation fuzzing of the litmus loader and ``shootdown run``.

Every corpus file is mutated (bit flips in its bytes, a deleted key, two values
swapped, a value replaced by a hostile one) and replayed with ``shootdown run``:
the exit status must be 0, 1 or 2, never an exception, and an error is one
line.  Derandomized: case ``n`` uses ``random.Random(n)``, so a failure names
the case that reproduces it.  ``make test`` runs CASES cases; ``-m slow`` runs
SLOW_CASES more.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fuzz import corpus
from fuzz.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _absolute(path: Path) -> str:
    """A corpus file's text with the plug-in files it names made absolute, so
    that its mutants, written elsewhere, still name them."""
    text = path.read_text()
    for rel in sorted(set(re.findall(r"(?:\.\./)+[\w/.-]+\.py", text)), key=len, reverse=True):
        text = text.replace(rel, str((path.parent / rel).resolve()))
    return text


SEEDS = [_absolute(p) for p in corpus.litmus_files(ROOT / "corpus")]
CASES = 300
SLOW_CASES = 3000
CHUNK = 30

HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 7, 9, 2**64, -(2**63), 0x1000, 0x200001, 0x7fffffffffff, 1.5, float("inf"),
    "", "S", "x" * 300, "op_end", "gupfast:pmd_read", "munmap", "../x.py", "/etc/passwd", "direct",
    [], [None], [[[]]], ["table-uaf"], [True, False], {}, {"cpu": 0}, {"op": "exit"}, {"rcu": 3},
    {"cpu": 0, "op": "munmap", "addr": 0x200000, "len": 0x200000},
]


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) in a loaded document."""
    if isinstance(node, dict):
        for k in list(node):
            out.append((node, k))
            _slots(node[k], out)
    elif isinstance(node, list):
        for i in range(len(node)):
            out.append((node, i))
            _slots(node[i], out)
    return out


def mutate(rng: random.Random, text: str) -> bytes:
    kind = rng.choice(("flip", "flip", "delete", "swap", "replace"))
    if kind == "flip":
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8 if rng.random() < 0.1 else 7)  # mostly stays text
        return bytes(b)
    data = yaml.safe_load(text)
    slots = _slots(data, [])
    if kind == "delete":
        dicts = [(c, k) for c, k in slots if isinstance(c, dict)] or slots
        c, k = rng.choice(dicts)
        del c[k]
    elif kind == "swap":
        (c1, k1), (c2, k2) = rng.choice(slots), rng.choice(slots)
        if c1[k1] is not c2 and c2[k2] is not c1:  # not a value into itself
            c1[k1], c2[k2] = c2[k2], c1[k1]
    else:
        c, k = rng.choice(slots)
        c[k] = rng.choice(HOSTILE)
    return yaml.safe_dump(data, sort_keys=False).encode()


def check_case(n: int, tmp: Path, capsys) -> str | None:
    """Run case ``n``; a description of what went wrong, or None."""
    rng = random.Random(n)
    data = mutate(rng, rng.choice(SEEDS))
    f = tmp / f"case-{n}.yaml"
    f.write_bytes(data)
    try:
        code = main(["run", "-q", "--trust-plugins-under", str(ROOT), str(f)])
    except BaseException as e:  # noqa: BLE001  (exactly what must not happen)
        capsys.readouterr()
        return f"case {n}: raised {type(e).__name__}: {e}"
    out, err = capsys.readouterr()
    if code not in (0, 1, 2):
        return f"case {n}: exit status {code}"
    if "Traceback" in err or "Traceback" in out:
        return f"case {n}: a traceback"
    if code == 2 and (len(err.strip().splitlines()) != 1 or not err.startswith("shootdown: error: ")):
        return f"case {n}: exit 2 without a one-line error: {err[:300]!r}"
    return None


def _chunk(first: int, tmp_path: Path, capsys) -> None:
    failures = [msg for n in range(first, first + CHUNK) if (msg := check_case(n, tmp_path, capsys))]
    assert not failures, ("mutated litmus files that break shootdown run (reproduce with "
                          "tests/test_loader_fuzz.py:mutate(random.Random(N), ...)):\n" + "\n".join(failures))


@pytest.mark.parametrize("first", range(0, CASES, CHUNK))
def test_mutated_litmus_files(first, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _chunk(first, tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("first", range(CASES, CASES + SLOW_CASES, CHUNK))
def test_mutated_litmus_files_slow(first, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _chunk(first, tmp_path, capsys)


def test_the_mutations_are_varied_and_derandomized():
    texts = [mutate(random.Random(n), SEEDS[n % len(SEEDS)]) for n in range(60)]
    assert texts == [mutate(random.Random(n), SEEDS[n % len(SEEDS)]) for n in range(60)]
    outcomes = set()
    for t in texts:
        try:
            corpus.parse(t.decode("utf-8", "replace"), "m.yaml")
            outcomes.add("parses")
        except corpus.CorpusError:
            outcomes.add("refused")
    assert outcomes == {"parses", "refused"}
