"""fuzz.minimize and ``shootdown minimize``: a large finding shrinks to a
small reproducer that still shows the same violation (same check, same
signature) on the same strategy when replayed with its recorded schedule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fuzz import corpus
from fuzz.cli import main
from fuzz.engine import fuzz_iter
from fuzz.envs import ENVIRONMENTS
from fuzz.minimize import _without_cpu, minimize, size_of
from fuzz.run import run_lockstep, run_program
from impls import registry
from impls.machine.choices import SchedEntry, Schedule
from impls.machine.program import Op, Program

XEN = ENVIRONMENTS["xen-pv"]
DIRECT = registry.strategy("direct")
XENPV = registry.platform("xen-pv")
CORPUS = Path(__file__).resolve().parent.parent / "corpus"


@pytest.fixture(scope="module")
def large_finding():
    """The GUP-fast use-after-free of direct on xen-pv, as the random engine
    finds it: 121 operations, 77 preemptions."""
    f = next(fuzz_iter([DIRECT], XENPV, XEN, "random", seed=0, length=128, stop=lambda i: i >= 20))
    assert len(f.program.ops) > 100 and f.checks == ["table-uaf"]
    return f


@pytest.fixture(scope="module")
def minimised(large_finding):
    f = large_finding
    return minimize(f.program, DIRECT, XENPV, f.violations[0].signature(), budget=20,
                    biases=XEN.choice_biases())


def test_a_large_finding_shrinks_to_at_most_10_operations(large_finding, minimised):
    r = minimised
    assert r.complete
    assert r.after["ops"] + r.after["setup"] <= 10
    assert r.after["cpus"] <= 2 and r.after["preemptions"] <= 2
    assert r.before["ops"] == len(large_finding.program.ops)


def test_the_minimised_program_replays_to_the_same_signature(large_finding, minimised):
    sig = large_finding.violations[0].signature()
    run = run_program(minimised.program, DIRECT, XENPV)  # Replay of the program's own schedule
    assert sig in [v.signature() for v in run.verdict.violations]
    assert minimised.violation.signature() == sig


def test_the_minimised_program_survives_the_yaml_round_trip(minimised):
    lit = corpus.parse(corpus.dumps(corpus.Litmus(minimised.program)), "min.yaml")
    run = run_program(lit.program, DIRECT, XENPV)
    assert "table-uaf" in run.verdict.checks()


def test_a_program_that_does_not_fail_is_refused(large_finding):
    clean = replace(large_finding.program, ops=(), schedule=None)
    with pytest.raises(ValueError, match="does not reproduce"):
        minimize(clean, DIRECT, XENPV, large_finding.violations[0].signature(), budget=5)


def test_the_budget_is_honoured(large_finding):
    f = large_finding
    r = minimize(f.program, DIRECT, XENPV, f.violations[0].signature(), budget=0.3)
    assert r.seconds < 5
    # cut short or not, what comes back still fails the same way
    run = run_program(r.program, DIRECT, XENPV)
    assert f.violations[0].signature() in [v.signature() for v in run.verdict.violations]


def test_removing_a_cpu_renumbers_ops_and_schedule():
    p = Program(cpus=3, start=(0, 0, 0), vmas=((0, 0x200000, 0x200000),),
                setup=(Op(1, "populate", addr=0x200000, len=0x1000),),
                ops=(Op(0, "access", addr=0x200000), Op(1, "gup_fast", addr=0x200000),
                     Op(2, "munmap", addr=0x200000, len=0x200000)),
                schedule=Schedule((SchedEntry(1, 3), SchedEntry(2, 1), SchedEntry(0, 2))))
    cands = _without_cpu(p, 1)
    q = cands[0]
    assert q.cpus == 2 and [o.cpu for o in q.ops] == [0, 1] and q.setup == ()
    assert q.schedule.sched == (SchedEntry(1, 1), SchedEntry(0, 2))
    moved = cands[1]  # the setup op moves to a CPU starting in the same mm
    assert moved.setup == (Op(0, "populate", addr=0x200000, len=0x1000),)


def test_size_of():
    assert size_of(Program()) == {"ops": 0, "setup": 0, "cpus": 2, "vmas": 0, "mms": 1, "sched_entries": 0,
                                  "preemptions": 0, "flips": 0}


def test_minimize_command(capsys, tmp_path, large_finding):
    big = tmp_path / "big.yaml"
    corpus.save(corpus.Litmus(large_finding.program, title="big", expect={"direct": ["table-uaf"]}), big)
    out = tmp_path / "small.yaml"
    code = main(["minimize", str(big), "--strategy", "direct", "--out", str(out), "--budget", "20"])
    text, _ = capsys.readouterr()
    assert code == 0 and "wrote" in text and "-> " in text
    lit = corpus.load(out)
    assert len(lit.program.ops) + len(lit.program.setup) <= 10
    assert lit.expect == {"direct": ["table-uaf"]} and lit.signature.startswith("direct|table-uaf|")
    assert main(["run", str(out), "--strategy", "direct"]) == 1
    capsys.readouterr()


def test_minimize_command_to_a_directory_names_the_race(capsys, tmp_path):
    code = main(["minimize", str(CORPUS / "gupfast+munmap+xenflush.yaml"), "--out", str(tmp_path),
                 "--budget", "10"])
    text, _ = capsys.readouterr()
    assert code == 0
    (f,) = tmp_path.glob("*.yaml")
    assert f.name.startswith("gupfast+munmap+") and f.name.endswith("+xen-pv-direct.yaml")
    lit = corpus.load(f)
    assert lit.expect["direct"] == ["table-uaf"] and lit.expect["semi-rcu"] == "S"
    assert lit.refs  # the original's references are kept


def test_minimize_command_rejects_a_clean_file(capsys):
    code = main(["minimize", str(CORPUS / "gupfast+munmap+xenflush.yaml"), "--strategy", "full-rcu"])
    _, err = capsys.readouterr()
    assert code == 2 and "no violation to minimise" in err


# -- minimisation merges CPUs -------------------------------------------------------------------------

THREE_CPUS = """\
shootdown: 1
platform: xen-pv
cpus: 3
vmas:
  - {mm: 0, start: 0x200000, len: 0x200000}
  - {mm: 0, start: 0x600000, len: 0x200000}
setup:
  - {cpu: 1, op: access, addr: 0x200000, write: true}
ops:
  - {cpu: 1, op: gup_fast, addr: 0x200000}
  - {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}
  - {cpu: 2, op: access, addr: 0x600000, write: true}
schedule:
  - {cpu: 1, until: "gup_fast:pmd_read"}
  - {cpu: 0, until: op_end}
  - {cpu: 2, until: op_end}
"""


def _witness_signature(text: str) -> str:
    lit = corpus.parse(text, "x.yaml")
    res = run_lockstep(lit.program, [registry.strategy("direct")], registry.platform("xen-pv"))
    return res.runs[0].verdict.violations[0].signature()


def test_minimisation_merges_cpus_where_the_signature_survives(capsys, tmp_path):
    """Worked example A with the reusing access on a third CPU: no CPU can be
    dropped (the reuse is part of the signature), but CPU2's access can run
    on CPU0 after the munmap, as in the corpus file."""
    f = tmp_path / "three.yaml"
    f.write_text(THREE_CPUS)
    out = tmp_path / "min.yaml"
    code = main(["minimize", str(f), "--strategy", "direct", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and "3 CPUs, 2 preemptions -> 3 ops + 1 setup, 2 CPUs" in stdout
    lit = corpus.load(out)
    assert lit.program.cpus == 2
    res = run_lockstep(lit.program, [registry.strategy("direct")], registry.platform("xen-pv"))
    v = res.runs[0].verdict.violations[0]
    assert v.signature() == _witness_signature(THREE_CPUS)                 # the same witness signature
