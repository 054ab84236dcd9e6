"""Hostile and malformed input: reading a reproducer must be as safe as reading
any text, and every mistake costs one line of error and exit status 2.

Each test here failed on the code before issue 13 (a traceback, exit 1, a
silently accepted value, or Python imported from a litmus file)."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fuzz import corpus
from fuzz.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_A = str(ROOT / "corpus" / "gupfast+munmap+xenflush.yaml")
IPI = str(ROOT / "corpus" / "gupfast+munmap+ipi.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shootdown: error: "), err
    return lines[0]


# -- YAML bombs ---------------------------------------------------------------------------------

def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Nine levels of nine aliases: 9**9 (387 million) leaves once expanded."""
    lines = ["shootdown: 1", "a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append("ops: []")
    return "\n".join(lines) + "\n"


def limited(limit_bytes: int):
    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return pre


def test_alias_bomb_is_refused_within_bounded_memory(tmp_path):
    """Under a 1 GiB address-space limit the bomb must be refused (exit 2, one
    line), not expanded (MemoryError or the OOM killer)."""
    f = tmp_path / "bomb.yaml"
    f.write_text(alias_bomb())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-m", "fuzz", "run", str(f)], capture_output=True, text=True,
                       preexec_fn=limited(1 << 30), cwd=ROOT, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert p.returncode == 2, p.stderr[-2000:]
    line = one_line_error(p.stderr)
    assert f"{f}:2:" in line and "anchors" in line
    # a hang guard, not a benchmark: the whole process, interpreter start
    # included, takes about 0.3 CPU s (bench/loader.py)
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 30


def test_alias_bomb_is_refused_in_under_a_second():
    """The refusal comes before any expansion: reading the bomb costs about a
    millisecond of CPU (bench/loader.py), so one CPU second is a thousandfold
    margin, not a timing assumption.  Before issue 13 the line-number walk
    expanded it until the process ran out of memory."""
    text = alias_bomb()
    t0 = time.process_time()
    with pytest.raises(corpus.CorpusError, match="anchors"):
        corpus.parse(text, "bomb.yaml")
    assert time.process_time() - t0 < 1.0


@pytest.mark.parametrize("text, line, what", [
    ("shootdown: 1\nbase: &b {cpu: 0, op: exit}\nops: [*b]\n", 2, "anchors (&b)"),
    ("shootdown: 1\nops:\n  - &op {cpu: 0, op: exit}\n  - *op\n", 3, "anchors (&op)"),
    ("shootdown: 1\ntitle: a & b\nops: []\n", None, None),     # an ampersand is not an anchor
])
def test_anchors_and_aliases_are_refused(text, line, what):
    if what is None:
        assert corpus.parse(text, "f.yaml").title == "a & b"
        return
    with pytest.raises(corpus.CorpusError) as e:
        corpus.parse(text, "f.yaml")
    assert str(e.value).startswith(f"f.yaml:{line}: YAML {what}")


def test_the_c_loader_parses_once():
    """The YAML is composed once, by libyaml's parser where PyYAML has it
    (the old reader composed it twice with the pure-Python parser)."""
    if yaml.__with_libyaml__:
        assert issubclass(corpus._Loader, yaml.CSafeLoader)
    calls = []
    real = corpus._Loader.get_single_node

    def counting(self):
        calls.append(1)
        return real(self)

    corpus._Loader.get_single_node = counting
    try:
        ops = "".join(f"  - {{cpu: {i % 2}, op: access, addr: 0x200000}}\n" for i in range(2000))
        lit = corpus.parse("shootdown: 1\nvmas:\n  - {start: 0x200000, len: 0x200000}\nops:\n" + ops)
    finally:
        corpus._Loader.get_single_node = real
    assert len(lit.program.ops) == 2000 and calls == [1]


# -- malformed files: one line, file and line, exit 2 ----------------------------------------------

MALFORMED = [
    ("vmas-int", "shootdown: 1\nvmas: 5\nops: []\n", 2, "vmas: expected a list"),
    ("expect-int-key", "shootdown: 1\nexpect: {1: S}\nops: []\n", 2, "unknown strategy 1"),
    ("op-list", "shootdown: 1\nops:\n  - {cpu: 0, op: [munmap]}\n", 3, "ops[0].op: expected an operation name"),
    ("op-map", "shootdown: 1\nops:\n  - {cpu: 0, op: {a: 1}}\n", 3, "got a mapping"),
    ("op-set", "shootdown: 1\nops:\n  - {cpu: 0, op: !!set {munmap}}\n", 3, "got a set"),
    ("timestamp", "shootdown: 1\ntitle: !!timestamp notadate\nops: []\n", 2, "'notadate' is not a valid !!timestamp"),
    ("deep", "shootdown: 1\nops: " + "[" * 5000 + "]" * 5000 + "\n", 2, "not valid YAML"),
    ("empty", "", 1, "empty file"),
    ("comments-only", "# nothing\n", 1, "empty file"),
    ("null-doc", "~\n", 1, "expected a mapping, got nothing"),
    ("typo-strategy", "shootdown: 1\nexpect: {nope: S}\nops: []\n", 2, "expect.nope: unknown strategy 'nope'"),
    ("version-true", "shootdown: true\nops: []\n", 1, "unsupported format version true"),
    ("munmap-past-task-size", "shootdown: 1\nops:\n  - {cpu: 0, op: munmap, addr: 0x7ffffffff000, len: 0x200000}\n",
     3, "runs past TASK_SIZE (0x800000000000)"),
    ("addr-hex", "shootdown: 1\nops:\n  - {cpu: 0, op: access, addr: 0x900000000000}\n", 3,
     "0x900000000000 is out of range [0x0, 0x7ffffffff000]"),
    ("unknown-platform", "shootdown: 1\ncpus: 2\nplatform: mars\nops: []\n", 3, "platform: unknown platform 'mars'"),
    ("title-list", "shootdown: 1\ntitle: [a, b]\nops: []\n", 2, "title: expected a string"),
    ("refs-nested", "shootdown: 1\nrefs: [[[a]]]\nops: []\n", 2, "refs[0]: expected a string"),
    ("ops-zero", "shootdown: 1\nops: 0\n", 2, "ops: expected a list"),
    ("two-documents", "shootdown: 1\nops: []\n---\nshootdown: 1\n", 3, "not valid YAML"),
    ("bad-int", "shootdown: 1\ncpus: !!int two\nops: []\n", 2, "not a valid !!int"),
]


@pytest.mark.parametrize("text, line, fragment", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_one_line_exit_2(capsys, tmp_path, text, line, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    code, out, err = run(capsys, "run", str(f))
    assert code == 2 and out == ""
    msg = one_line_error(err)
    assert msg.startswith(f"shootdown: error: {f}:{line}: ") and fragment in msg, msg


def test_not_utf8_and_too_large(capsys, tmp_path):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"shootdown: 1\nops: []\ntitle: \xff\xfe\n")
    code, _, err = run(capsys, "run", str(f))
    assert code == 2 and f"{f}:3: not a text file" in one_line_error(err)
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(corpus.MAX_FILE_BYTES + 1)
    code, _, err = run(capsys, "run", str(big))
    assert code == 2 and "larger than 64 MiB" in one_line_error(err)


def test_a_ten_megabyte_title_is_read(tmp_path):
    f = tmp_path / "title.yaml"
    f.write_text("shootdown: 1\ntitle: " + "x" * 10_000_000 + "\nops: []\n")
    assert len(corpus.load(f).title) == 10_000_000


# -- plug-ins run only with consent ---------------------------------------------------------------

PLUGIN = '''\
"""A platform whose import leaves a mark: it must never be imported unasked."""
from pathlib import Path
Path({marker!r}).write_text("imported")
from impls.platforms.native import *  # noqa: F401,F403
NAME = "marked"
'''

LITMUS = """\
shootdown: 1
expect: {{direct: S}}
platform: {platform}
cpus: 2
vmas:
  - {{start: 0x200000, len: 0x200000}}
ops:
  - {{cpu: 0, op: access, addr: 0x200000, write: true}}
"""


@pytest.fixture
def marked(tmp_path):
    """A litmus file in tmp/case/ naming ../plugins/p.py (outside its directory)
    and one naming ./p.py (inside it); each .py leaves a marker when imported."""
    case, plugins = tmp_path / "case", tmp_path / "plugins"
    case.mkdir()
    plugins.mkdir()
    inside, outside = case / "p.py", plugins / "p.py"
    inside.write_text(PLUGIN.format(marker=str(tmp_path / "inside-imported")))
    outside.write_text(PLUGIN.format(marker=str(tmp_path / "outside-imported")))
    (case / "in.yaml").write_text(LITMUS.format(platform="p.py"))
    (case / "out.yaml").write_text(LITMUS.format(platform="../plugins/p.py"))
    (case / "abs.yaml").write_text(LITMUS.format(platform=str(outside)))
    return tmp_path


@pytest.mark.parametrize("command", ["run", "explain", "minimize"])
@pytest.mark.parametrize("name", ["in.yaml", "out.yaml", "abs.yaml"])
def test_a_litmus_file_naming_python_does_not_run_it(capsys, marked, command, name):
    f = marked / "case" / name
    code, out, err = run(capsys, command, str(f))
    assert code == 2
    msg = one_line_error(err)
    assert f"{f}:3:" in msg and "p.py" in msg and "--platform-file" in msg and "--trust-plugins" in msg
    assert not (marked / "inside-imported").exists() and not (marked / "outside-imported").exists()


def test_trust_plugins_allows_only_the_litmus_files_own_directory(capsys, marked):
    code, out, err = run(capsys, "run", "-q", "--trust-plugins", str(marked / "case" / "in.yaml"))
    assert code == 0 and "platform marked" in out and (marked / "inside-imported").exists()
    for name in ("out.yaml", "abs.yaml"):
        code, out, err = run(capsys, "run", "--trust-plugins", str(marked / "case" / name))
        assert code == 2 and "--trust-plugins does not cover it" in one_line_error(err)
        assert not (marked / "outside-imported").exists()
    code, out, err = run(capsys, "run", "-q", "--trust-plugins-under", str(marked), str(marked / "case" / "out.yaml"))
    assert code == 0 and (marked / "outside-imported").exists()


def test_command_line_paths_are_consent(capsys, marked):
    f = marked / "case" / "out.yaml"
    code, out, err = run(capsys, "run", "-q", str(f), "--platform-file", str(marked / "plugins" / "p.py"))
    assert code == 0 and (marked / "outside-imported").exists()


def test_an_expect_key_naming_a_strategy_file_needs_consent(capsys, tmp_path):
    s = tmp_path / "mine.py"
    s.write_text(f"from pathlib import Path\nPath({str(tmp_path / 'mark')!r}).write_text('x')\n"
                 "from impls.native.mmu_gather import *  # noqa\nNAME = 'mine'\n")
    f = tmp_path / "case" / "t.yaml"
    f.parent.mkdir()
    f.write_text("shootdown: 1\nexpect:\n  direct: S\n  ../mine.py: S\nops: []\n")
    code, _, err = run(capsys, "run", str(f))
    assert code == 2 and "the strategy" in err and "--strategy-file" in err and not (tmp_path / "mark").exists()
    code, out, err = run(capsys, "run", "-q", str(f), "--trust-plugins-under", str(tmp_path))
    assert code == 0 and "mine S (as expected)" in " ".join(out.split())   # matched by path
    assert (tmp_path / "mark").exists()


# -- plug-in code that fails while it runs -----------------------------------------------------------

HOOK = '''\
from impls.native import mmu_gather as _native

NAME = "failing"
pmd_free_tlb = _native.pmd_free_tlb
pud_free_tlb = _native.pud_free_tlb
tlb_flush_mmu = _native.tlb_flush_mmu


def pte_free_tlb(tlb, pte, address):
    {body}
    yield
'''


@pytest.mark.parametrize("body, what", [
    ('raise RuntimeError("planted")', "pte_free_tlb() raised RuntimeError: planted"),
    ("import sys; sys.exit(3)", "pte_free_tlb() called sys.exit(3)"),
    # (TypeError under the compiled build: a compiled function checks its arguments' types)
    ("yield from _native.pte_free_tlb(tlb, None, address)",
     "pte_free_tlb() raised AttributeError|pte_free_tlb() raised TypeError: impls.machine.page_alloc.Frame"),
])
def test_a_hook_that_fails_is_that_plugins_error(capsys, tmp_path, body, what):
    f = tmp_path / "failing.py"
    f.write_text(HOOK.format(body=body))
    code, out, err = run(capsys, "run", IPI, "--strategy-file", str(f))
    assert code == 2
    msg = one_line_error(err)
    assert any(f"{f}:10: strategy 'failing': {w}" in msg for w in what.split("|")), msg


@pytest.mark.parametrize("argv", [
    ["run", IPI, "--exhaustive", "--preemptions", "1"],
    ["fuzz", "--env", "native", "--runs", "5", "--jobs", "1", "--no-write"],
    ["fuzz", "--env", "native", "--runs", "5", "--jobs", "2", "--no-write"],     # in worker processes
    ["matrix", "--env", "native", "--runs", "5", "--jobs", "1", "--out", "{tmp}/m"],
    ["matrix", "--exhaustive", "--env", "native", "--programs", "1", "--jobs", "1", "--out", "{tmp}/m"],
], ids=["run-exhaustive", "fuzz", "fuzz-jobs-2", "matrix", "matrix-exhaustive"])
@pytest.mark.parametrize("body, what", [
    ('raise RuntimeError("planted")', "pte_free_tlb() raised RuntimeError: planted"),
    ("import sys; sys.exit(3)", "pte_free_tlb() called sys.exit(3)"),
], ids=["raises", "sys-exit"])
def test_a_failing_hook_is_the_plugins_error_in_every_command(capsys, tmp_path, argv, body, what):
    """Not only under `run`: a campaign stops with the plug-in's one-line error
    naming the user's file (not a worker's copy of it) and exit 2; it used to
    count as a CRASH of the simulator (exit 1) with a traceback."""
    f = tmp_path / "failing.py"
    f.write_text(HOOK.format(body=body))
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv], "--strategy-file", str(f))
    assert code == 2, out + err
    assert f"{f}:10: strategy 'failing': {what}" in one_line_error(err)


def test_sys_exit_at_import_is_the_plugins_error(capsys, tmp_path):
    f = tmp_path / "exits.py"
    f.write_text('NAME = "x"\nimport sys\nsys.exit(3)\n')
    code, _, err = run(capsys, "run", IPI, "--strategy-file", str(f))
    assert code == 2 and f"{f}:3: importing the strategy failed: called sys.exit(3)" in one_line_error(err)


def test_a_hook_calling_sys_exit_does_not_set_the_exit_status(tmp_path):
    f = tmp_path / "failing.py"
    f.write_text(HOOK.format(body="import sys; sys.exit(3)"))
    p = subprocess.run([sys.executable, "-m", "fuzz", "run", IPI, "--strategy-file", str(f)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 2 and "called sys.exit(3)" in one_line_error(p.stderr)


# -- arguments -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["fuzz", "--budget", "nan"], "--budget nan: expected a positive number of seconds"),
    (["fuzz", "--budget", "inf"], "--budget inf: expected a positive number"),
    (["fuzz", "--jobs", "1000"], "--jobs 1000: at most"),
    (["fuzz", "--swarm", "nan"], "--swarm nan: expected a fraction"),
    (["matrix", "--budget", "nan"], "--budget nan"),
    (["matrix", "--jobs", "1000"], "--jobs 1000"),
    (["explore", "--budget", "nan"], "--budget nan"),
    (["explore", "--jobs", "1000"], "--jobs 1000"),
    (["minimize", EXAMPLE_A, "--budget", "nan"], "--budget nan"),
    (["minimize", EXAMPLE_A, "--budget", "-1"], "--budget -1"),
    (["explain", EXAMPLE_A, "--width", "x"], "--width x"),
])
def test_bad_numbers_are_refused(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert fragment in one_line_error(err)


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_fuzz_out_that_cannot_hold_files_is_refused_before_fuzzing(capsys, tmp_path, kind):
    f = tmp_path / "a-file"
    f.write_text("")
    out = f if kind == "file" else f / "sub"
    code, stdout, err = run(capsys, "fuzz", "--strategy", "direct", "--platform", "xen-pv", "--runs", "50",
                            "--jobs", "1", "--out", str(out))
    assert code == 2 and stdout == ""           # nothing fuzzed, nothing lost
    assert f"--out {out}:" in one_line_error(err) and "not a directory" in err


def test_matrix_out_is_checked_too(capsys, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("")
    code, stdout, err = run(capsys, "matrix", "--strategy", "direct", "--env", "xen-pv", "--runs", "5",
                            "--out", str(f))
    assert code == 2 and "--out" in one_line_error(err)


@pytest.mark.parametrize("out", ["a-file/x.yaml", "a-file/dir"])
def test_minimize_out_unwritable(capsys, tmp_path, out):
    (tmp_path / "a-file").write_text("")
    code, stdout, err = run(capsys, "minimize", EXAMPLE_A, "--strategy", "direct", "--out", str(tmp_path / out))
    assert code == 2 and stdout == ""
    assert "not a directory" in one_line_error(err)


def test_save_to_an_unwritable_place_is_a_one_line_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(corpus.CorpusError, match="cannot write"):
        corpus.save(corpus.load(EXAMPLE_A), tmp_path / "f" / "x.yaml")


def test_an_until_label_never_reached_is_an_error(capsys, tmp_path):
    src = Path(EXAMPLE_A).read_text().replace('until: "gup_fast:pmd_read"', 'until: "gupfast:pmd_read"')
    f = tmp_path / "typo.yaml"
    f.write_text(src)
    line = next(i for i, ln in enumerate(src.splitlines(), 1) if "gupfast:pmd_read" in ln)
    for command in ("run", "explain"):
        code, out, err = run(capsys, command, str(f))
        assert code == 2 and out == ""
        msg = one_line_error(err)
        assert f"{f}:{line}: schedule[0].until: CPU1 never reached the preemption point 'gupfast:pmd_read'" in msg


PARTIAL = """\
shootdown: 1
platform: native
cpus: 2
vmas:
  - {start: 0x200000, len: 0x200000}
setup:
  - {cpu: 1, op: access, addr: 0x200000, write: true}
ops:
  - {cpu: 1, op: gup_fast, addr: 0x200000}
  - {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}
schedule:
  - {cpu: 1, until: "gup_fast:pmd_read"}
  - {cpu: 0, until: "tlb_remove_table_sync_one:csd_lock_wait"}
choices:
  alloc_fails:mmu_table_batch: [true]
"""


def test_a_label_reached_on_some_strategies_only_is_fine(capsys, tmp_path):
    """Only semi-rcu's single-table fallback waits in tlb_remove_table_sync_one():
    direct and full-rcu never reach that label, and that is no mistake."""
    f = tmp_path / "partial.yaml"
    f.write_text(PARTIAL)
    code, out, err = run(capsys, "run", "-q", str(f))
    assert code == 0 and err == ""
    code, out, err = run(capsys, "run", "-q", str(f), "--strategy", "direct")
    assert code == 2 and "never reached" in one_line_error(err)


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)
