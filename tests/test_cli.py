"""The command line: verdicts, exit codes, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_A = str(ROOT / "corpus" / "gupfast+munmap+xenflush.yaml")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_prints_verdicts_and_exits_1_on_violation(capsys):
    code, out, err = run(capsys, "run", EXAMPLE_A)
    assert code == 1
    assert "direct    U  table-uaf" in out
    assert "semi-rcu  S" in out and "full-rcu  S" in out
    assert "why:" in out


def test_run_clean_exits_0(capsys):
    code, out, _ = run(capsys, "run", EXAMPLE_A, "--strategy", "full-rcu")
    assert code == 0
    assert "full-rcu  S" in out and "direct" not in out


def test_platform_override(capsys):
    code, out, _ = run(capsys, "run", EXAMPLE_A, "--platform", "native", "-q")
    assert code == 0 and "platform native" in out


def test_json_format(capsys):
    code, out, _ = run(capsys, "run", EXAMPLE_A, "--format", "json")
    data = json.loads(out)
    assert code == 1
    by = {r["strategy"]: r for r in data["results"]}
    assert by["direct"]["verdict"] == "U" and by["direct"]["checks"] == ["table-uaf"]
    assert by["direct"]["matches_expected"] is True
    w = by["direct"]["violations"][0]["witness"]
    assert any(e["kind"] == "free" for e in w) and any(e["kind"] == "sw_read" for e in w)


@pytest.mark.parametrize("text, fragment", [
    ("shootdown: 1\nops: [\n", "not valid YAML"),
    ("shootdown: 2\nops: []\n", "unsupported format version"),
    ("shootdown: 1\nops:\n  - {cpu: 0, op: teleport}\n", "ops[0].op: unknown operation 'teleport'"),
    ("shootdown: 1\nops:\n  - {cpu: 5, op: exit}\n", "ops[0].cpu: 5 is out of range"),
    ("shootdown: 1\nops:\n  - {cpu: 0, op: munmap, addr: 0x1001, len: 0x1000}\n", "not page-aligned"),
    ("shootdown: 1\nops:\n  - {cpu: 0, op: munmap, addr: 0x1000}\n", "missing key 'len'"),
    ("shootdown: 1\nops: []\nbogus: 1\n", "unknown key 'bogus'"),
    ("shootdown: 1\nops: []\nschedule:\n  - {cpu: 0, steps: 1, until: x}\n", "not both"),
    ("shootdown: 1\nops: []\nchoices:\n  alloc_fails:nope: [true]\n", "unknown key"),
    ("shootdown: 1\nops: []\nexpect:\n  direct: [nonsense]\n", "unknown check 'nonsense'"),
    ("shootdown: 1\nops: []\nenv: {pt_reclaim: maybe}\n", "env.pt_reclaim"),
])
def test_bad_input_is_one_line_with_file_and_place(capsys, tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    code, out, err = run(capsys, "run", str(f))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(f) in err and fragment in err


def test_error_names_the_line(capsys, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("shootdown: 1\ncpus: 2\nops:\n  - {cpu: 0, op: access, addr: 0x200000}\n"
                 "  - {cpu: 0, op: munmap, addr: 0x3, len: 0x1000}\n")
    code, _, err = run(capsys, "run", str(f))
    assert code == 2 and f"{f}:5: ops[1].addr" in err


@pytest.mark.parametrize("argv, fragment", [
    (["--strategy", "nope"], "unknown strategy 'nope'"),
    (["--platform", "mars"], "unknown platform 'mars'"),
    (["--strategy-file", "/nonexistent/s.py"], "no such strategy file"),
    (["--platform-file", "/nonexistent/p.py"], "no such platform file"),
])
def test_unknown_names_exit_2(capsys, argv, fragment):
    code, _, err = run(capsys, "run", EXAMPLE_A, *argv)
    assert code == 2 and fragment in err and "Traceback" not in err


def test_missing_file_exit_2(capsys):
    code, _, err = run(capsys, "run", "/nonexistent.yaml")
    assert code == 2 and "no such file" in err


def test_strategy_file_missing_hook_is_reported(capsys, tmp_path):
    f = tmp_path / "half.py"
    f.write_text('NAME = "half"\ndef pte_free_tlb(tlb, pte, addr):\n    pass\n')
    code, _, err = run(capsys, "run", EXAMPLE_A, "--strategy-file", str(f))
    assert code == 2 and "does not define pmd_free_tlb()" in err


def test_strategy_file_syntax_error(capsys, tmp_path):
    f = tmp_path / "broken.py"
    f.write_text('NAME = "x"\ndef pte_free_tlb(:\n')
    code, _, err = run(capsys, "run", EXAMPLE_A, "--strategy-file", str(f))
    assert code == 2 and "syntax error" in err and "broken.py:2" in err


def test_unreached_until_label_is_an_error(capsys, tmp_path):
    src = Path(EXAMPLE_A).read_text().replace('until: "gup_fast:pmd_read"', 'until: "gupfast:pmd_read"')
    f = tmp_path / "typo.yaml"
    f.write_text(src)
    code, out, err = run(capsys, "run", str(f), "-q")
    assert code == 2 and "'gupfast:pmd_read'" in err and "never reached" in err


@pytest.mark.parametrize("body, fragment", [
    ('def pte_free_tlb(tlb, p, a):\n    yield\ndef pmd_free_tlb(tlb, p, a):\n    yield\n'
     'def pud_free_tlb(tlb, p, a):\n    yield\ndef tlb_flush_mmu(tlb):\n    yield\n'
     'def tlb_finsh_mmu(tlb):\n    yield\n', "tlb_finsh_mmu() is not a strategy hook; did you mean tlb_finish_mmu()?"),
    ('def pte_free_tlb(tlb, p, a):\n    yield\ndef pmd_free_tlb(tlb, p, a):\n    yield\n'
     'def pud_free_tlb(tlb, p, a):\n    yield\ndef tlb_flush_mmu(tlb):\n    yield\n'
     'def tlb_gather_mmu(tlb):\n    yield\n', "tlb_gather_mmu() must be a plain function"),
])
def test_strategy_file_mistakes_are_caught(capsys, tmp_path, body, fragment):
    f = tmp_path / "s.py"
    f.write_text('NAME = "s"\n' + body)
    code, _, err = run(capsys, "run", EXAMPLE_A, "--strategy-file", str(f))
    assert code == 2 and fragment in err


def test_half_broadcast_platform_is_rejected(capsys, tmp_path):
    f = tmp_path / "p.py"
    f.write_text('NAME = "p"\ndef flush_tlb_multi(cpu, mask, info):\n    yield\n'
                 'def mm_global_asid(mm):\n    return True\n')
    code, _, err = run(capsys, "run", EXAMPLE_A, "--platform-file", str(f))
    assert code == 2 and "both mm_global_asid() and broadcast_tlb_flush()" in err
