"""``shootdown explore``: budgets by iteration count, resuming, the report, bad input.

Every exploration here is bounded by ``--runs`` (programs), never by the clock,
and explores one strategy on one platform, so the tests are deterministic and
take seconds."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest

from fuzz import explore
from fuzz.cli import main
from impls import registry

#: a planted bug: the native direct free on Xen PV frees tables a GUP-fast
#: walker still reads (the hypercall flush does not wait for IRQ-off walkers)
PLANTED = ["--strategy", "direct", "--platform", "xen-pv"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["explore", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def corpus_files(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in (d / "corpus").rglob("*") if p.is_file()}


def state(d: Path) -> dict:
    return json.loads((d / "state.json").read_text())


# -- the pieces -----------------------------------------------------------------------------------

def test_mutation_is_seeded():
    data = bytes(range(200))
    a = explore.mutate(random.Random(7), data, b"other input")
    b = explore.mutate(random.Random(7), data, b"other input")
    assert a == b and a != data and 0 < len(a) <= explore.MAX_INPUT


def test_an_input_replays_exactly():
    config = explore.Config(("direct", "semi-rcu"), (("xen-pv", "xen-pv"),))
    target = explore.build_targets(config)[0]
    strategies = [registry.strategy(s) for s in config.strategies]
    data = explore.fresh_input(random.Random(3))
    one = explore.execute(data, target, strategies)
    two = explore.execute(data, target, strategies)
    assert [list(r.history.events) for r in one.runs] == [list(r.history.events) for r in two.runs]
    # an input with no schedule bytes left still interleaves: the schedule
    # continues from a seeded tail, not run-to-completion
    draw = explore.BytesDraw(data)
    program = explore.generate(draw, target.cfg)
    assert len({op.cpu for op in program.ops}) > 1
    short = explore.execute(data[:draw.i], target, strategies)
    assert short.runs[0].history.meta["schedule"].preemptions > program.cpus


def test_target_specs():
    assert explore.target_specs(None, None) == explore.default_targets()
    assert explore.target_specs(None, ["xen-pv"]) == (("xen-pv", "xen-pv"),)
    assert explore.target_specs(["native+batch-fail"], ["xen-pv", "broadcast"]) == (
        ("native+batch-fail", "xen-pv"), ("native+batch-fail", "broadcast"))
    with pytest.raises(explore.ExploreError, match="unknown environment"):
        explore.target_specs(["nope"], None)


def test_sparkline():
    assert explore.sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == explore.SPARK
    assert len(explore.sparkline(list(range(500)), width=40)) == 40


# -- exploring and resuming -------------------------------------------------------------------------

def test_resume_continues_the_iterations_and_keeps_the_corpus(tmp_path):
    # behaviour keys only: which arcs a run executes also depends on the memo
    # caches of the process (impls.machine.machine._descs), not only on the input
    kw = dict(strategies=["direct"], targets=[("xen-pv", "xen-pv")], report=False, arcs=False,
              minimize_attempts=0)
    a = tmp_path / "a"
    explore.explore(a, runs=40, **kw)
    first = corpus_files(a)
    assert state(a)["next_iteration"] == 40 and first
    s = explore.explore(a, runs=40, **kw)          # same --dir: resume
    st = state(a)
    assert st["next_iteration"] == 80 and st["stats"]["programs"] == 80 and s.session_programs == 40
    assert len(st["sessions"]) == 2 and st["sessions"][1]["first_iteration"] == 40
    assert first <= corpus_files(a)
    # one job: 40 + 40 is exactly 80 at once
    b = tmp_path / "b"
    explore.explore(b, runs=80, **kw)
    assert corpus_files(a) == corpus_files(b)
    assert sorted(f["signature"] for f in st["findings"]) == sorted(f["signature"] for f in state(b)["findings"])
    assert st["keys"] == state(b)["keys"] and st["stats"] == state(b)["stats"]


def test_arcs_and_behaviours_guide_the_corpus(tmp_path):
    s = explore.explore(tmp_path, ["direct"], [("xen-pv", "xen-pv")], runs=24, report=False, minimize_attempts=0)
    st = state(tmp_path)
    assert s.progress.arcs > 100 and any(a.startswith("impls/machine/") for a in st["arcs"])
    assert any("|b:0:" in k for k in st["keys"])
    assert st["behaviours_first"] and all(b in explore.BEHAVIOURS for b in st["behaviours_first"])
    assert len(st["corpus"]) == len(corpus_files(tmp_path))


def test_two_jobs(tmp_path):
    s = explore.explore(tmp_path, ["direct"], [("xen-pv", "xen-pv")], runs=2 * explore.BATCH, jobs=2,
                        report=False, minimize_attempts=0)
    st = state(tmp_path)
    assert s.session_programs == 2 * explore.BATCH and st["next_iteration"] == 2 * explore.BATCH
    assert st["corpus"] and st["arcs"]


def test_ctrl_c_stops_saves_and_reports(tmp_path):
    def interrupt(_progress):
        # raise_signal(), not os.kill(getpid()): in a process with other threads
        # kill() may deliver the signal to one of them, and the handler then
        # runs whenever that thread is next scheduled (on a loaded machine,
        # after another batch had started: the flaky failure of issue 13).
        # raise_signal() delivers it to this thread and runs the handler
        # before returning.
        signal.raise_signal(signal.SIGINT)

    # the handler shootdown found, restored afterwards: default_int_handler under a
    # terminal, SIG_IGN when the test run itself is a background job of a
    # non-interactive shell (POSIX shells start those with SIGINT ignored)
    before = signal.getsignal(signal.SIGINT)
    s = explore.explore(tmp_path, ["direct"], [("xen-pv", "xen-pv")], runs=10_000, arcs=False,
                        on_progress=interrupt, report=False)
    assert s.stopped_by == "interrupt" and s.session_programs == explore.BATCH
    st = state(tmp_path)
    assert st["sessions"][0]["stopped_by"] == "interrupt" and st["next_iteration"] == explore.BATCH
    assert len(st["corpus"]) == len(corpus_files(tmp_path))
    assert signal.getsignal(signal.SIGINT) is before   # handler restored


def test_a_later_session_minimises_what_was_left(tmp_path):
    kw = dict(strategies=["direct"], targets=[("xen-pv", "xen-pv")], arcs=False, report=False)
    s = explore.explore(tmp_path, runs=96, minimize_attempts=0, **kw)   # as after Ctrl-C: not minimised
    f = s.findings[0]
    assert f["minimise"] is None and f["size"]["ops"] > 8
    raw = (tmp_path / f["file"]).read_text()
    s = explore.explore(tmp_path, runs=0, **kw)                        # --runs 0: minimise, report
    g = s.findings[0]
    assert g["file"] == f["file"] and g["minimised"] and g["size"]["ops"] <= 8
    assert g["minimise"]["before"]["ops"] == f["size"]["ops"]
    text = (tmp_path / f["file"]).read_text()
    assert text != raw and "Minimised from" in text and f["signature"] in text
    assert main(["run", "-q", str(tmp_path / f["file"])]) == 1          # still the bug, on direct only


CRASHY = """\
\"\"\"A strategy file whose PUD-table free raises: that plug-in's error.\"\"\"
from impls.native import mmu_gather as _native

NAME = "crashy"
pte_free_tlb = _native.pte_free_tlb
pmd_free_tlb = _native.pmd_free_tlb
tlb_flush_mmu = _native.tlb_flush_mmu


def pud_free_tlb(tlb, pud, address):
    raise RuntimeError("planted crash")
    yield
"""


def test_a_crash_of_the_simulator_is_kept_not_hidden(tmp_path, monkeypatch):
    """A built-in's code raising is the simulator crashing (a plug-in file's is
    that file's error: the next test)."""
    def pud_free_tlb(tlb, pud, address):
        raise RuntimeError("planted crash")
        yield

    monkeypatch.setattr(registry.strategy("direct"), "pud_free_tlb", pud_free_tlb)
    d = tmp_path / "out"
    s = explore.explore(d, ["direct"], [("native", "native")], runs=32, arcs=False, report=False)
    assert s.session_programs == 32                      # the exploration went on
    assert len(s.crashes) == 1                           # the same crash, once
    c = s.crashes[0]
    assert c["error"].startswith("RuntimeError at test_explore.py:") and "planted crash" in c["error"]
    assert (d / "crashes" / f"{c['input']}.bin").exists()
    assert "planted crash" in (d / "crashes" / f"{c['input']}.txt").read_text()
    assert "### Crashes of the simulator" in explore.render_report(d, state(d))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_plugin_that_raises_is_its_error_not_a_crash(tmp_path, capsys, jobs):
    """Issue 13: a strategy file's hook that raises is that plug-in's error,
    with its file and line (not the worker's copy of it), exit 2."""
    strategy = tmp_path / "crashy.py"
    strategy.write_text(CRASHY)
    code = main(["explore", "--strategy-file", str(strategy), "--env", "native", "--runs", "32",
                 "--jobs", jobs, "--dir", str(tmp_path / "out"), "--no-arcs"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"shootdown: error: {strategy}:11: strategy 'crashy': pud_free_tlb() raised "
                           "RuntimeError: planted crash")


# -- the report, through the command line ------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """An exploration of a planted bug: 96 programs of direct on Xen PV (found at
    iteration 69).  Guided by behaviour keys only, so that the search does not
    depend on what this process ran before (see test_resume...)."""
    d = tmp_path_factory.mktemp("explore") / "out"
    code = main(["explore", "--dir", str(d), "--runs", "96", "--no-arcs", "--jobs", "1", *PLANTED])
    return d, code


def test_a_planted_bug_is_found_and_drawn(planted):
    d, code = planted
    assert code == 1
    st = state(d)
    f = st["findings"][0]
    assert f["strategy"] == "direct" and "table-uaf" in f["checks"]
    assert (d / f["file"]).exists() and (d / f["file"]).with_suffix(".input").exists()
    # written by fuzz.findings (named after what races), minimised by fuzz.minimize
    assert Path(f["file"]).name.startswith("gupfast+") and f["minimised"] and f["size"]["ops"] <= 8
    assert main(["run", "-q", str(d / f["file"]), "--strategy", "direct"]) == 1
    report = (d / "report.md").read_text()
    assert "### 1. table-uaf on direct (xen-pv)" in report
    assert "<== UAF-TABLE" in report and "CPU0" in report and "CPU1" in report   # the race diagram


@pytest.mark.interpreted
def test_the_report_has_coverage_behaviours_and_growth(planted):
    d, _ = planted
    report = (d / "report.md").read_text()
    for root in ("impls", "oracle"):
        assert f"| coverage of {root}/ | lines " in report
        assert f"**{root}/ total**" in report
    assert "| impls/machine/tlbflush.py |" in report and "| oracle/table_uaf.py |" in report
    assert (d / "coverage-html" / "index.html").exists()
    cov = state(d)["coverage"]["packages"]
    assert cov["impls"]["covered_lines"] > 0.5 * cov["impls"]["statements"]
    assert "## Behaviours" in report and "| `xen-mc-deferred` |" in report
    assert "**never**" in report                      # broadcast-flush: not on Xen PV
    assert "## Corpus growth" in report and "corpus     " in report
    rows = explore.read_progress(d)
    assert rows[-1]["programs"] == 96 and rows[-1]["corpus"] == len(state(d)["corpus"])


def test_report_only_regenerates_the_report(planted, capsys):
    d, _ = planted
    (d / "report.md").unlink()
    measured = state(d)["coverage"]
    code, out, err = run_cli(capsys, "--dir", str(d), "--report-only")
    assert code == 1 and "report written" in err
    assert (d / "report.md").exists() and "## Findings" in (d / "report.md").read_text()
    assert state(d)["coverage"] == measured           # the corpus did not change: not measured again


def test_clean_exploration_exits_0(tmp_path, capsys):
    code, out, err = run_cli(capsys, "--dir", str(tmp_path), "--runs", "16", "--strategy", "full-rcu",
                             "--platform", "native", "--no-arcs")
    assert code == 0, out
    assert "findings 0" in out and "report.md" in out


# -- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--strategy", "nope"], "unknown strategy"),
    (["--platform", "nope"], "unknown platform"),
    (["--env", "nope"], "unknown environment"),
    (["--jobs", "-1"], "--jobs -1"),
    (["--runs", "-1"], "--runs -1"),
    (["--length", "0"], "--length 0"),
    (["--budget", "-1"], "--budget -1"),
    (["--minimize-attempts", "-1"], "--minimize-attempts -1"),
    (["--jobs", "1000"], "--jobs 1000"),
    (["--budget", "nan"], "--budget nan"),
    (["--report-only"], "no exploration here"),
])
def test_bad_input_exits_2(tmp_path, capsys, argv, message):
    code, out, err = run_cli(capsys, "--dir", str(tmp_path / "d"), "--runs", "1", *argv)
    assert code == 2
    assert err.startswith("shootdown: error:") and message in err and len(err.strip().splitlines()) == 1


def test_resuming_with_other_options_exits_2(tmp_path, capsys):
    explore.explore(tmp_path, ["direct"], [("xen-pv", "xen-pv")], runs=1, arcs=False, report=False)
    code, out, err = run_cli(capsys, "--dir", str(tmp_path), "--runs", "1", "--seed", "5")
    assert code == 2 and "explored with --seed 0, not 5" in err
    code, out, err = run_cli(capsys, "--dir", str(tmp_path), "--runs", "1", "--strategy", "semi-rcu")
    assert code == 2 and "explored with strategies direct" in err


def test_a_broken_directory_exits_2(tmp_path, capsys):
    (tmp_path / "state.json").write_text("{not json")
    code, out, err = run_cli(capsys, "--dir", str(tmp_path), "--runs", "1")
    assert code == 2 and "state.json" in err
    f = tmp_path / "file"
    f.write_text("")
    code, out, err = run_cli(capsys, "--dir", str(f), "--runs", "1")
    assert code == 2 and "not a directory" in err
