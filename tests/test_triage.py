"""Findings triage (fuzz.triage): one bug one reproducer, new vs known,
base-vs-patch verdicts, JUnit reports, divergences that must replay, and
progress without a terminal.  Budgets are program counts and seeds."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fuzz import corpus, junit, triage
from fuzz.cli import main
from fuzz.engine import Stats, finding_signature, findings_of
from fuzz.envs import ENVIRONMENTS
from fuzz.report import PeriodicProgress
from fuzz.run import run_lockstep
from impls import registry

ROOT = Path(__file__).resolve().parent.parent
MUT = ROOT / "tests" / "mutants"
XENFLUSH = ROOT / "corpus" / "gupfast+munmap+xenflush.yaml"
SKIPPED = str(MUT / "sync_ipi_always_skipped.py")   # semi-rcu without its sync IPI: planted on xen-pv+batch-fail


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)


# -- one bug, one reproducer ------------------------------------------------------------------------

def _uaf(text: str):
    lit = corpus.parse(text, "x.yaml")
    res = run_lockstep(lit.program, [registry.strategy("direct")], registry.platform("xen-pv"))
    return lit.program, res, res.runs[0].verdict.violations[0]


def test_the_same_race_with_and_without_reuse_is_one_finding():
    """Worked example A with the freed table reused (an alloc in the witness)
    and without (the access that reuses it dropped): different witness
    signatures, one race, one finding."""
    reused_src = XENFLUSH.read_text()
    freed_src = reused_src.replace("  - {cpu: 0, op: access, addr: 0x600000, write: true}\n", "")
    p1, res1, reused = _uaf(reused_src)
    p2, res2, freed = _uaf(freed_src)
    assert reused.check == freed.check == "table-uaf"
    assert any(e.kind == "alloc" for e in reused.witness) and not any(e.kind == "alloc" for e in freed.witness)
    assert reused.signature() != freed.signature()                       # what deduplicated before
    assert triage.race_key(reused) == triage.race_key(freed)
    assert finding_signature("direct", reused) == finding_signature("direct", freed)
    key = triage.race_key(reused)
    assert key.startswith("table-uaf|use:gup_fast/gup_fast") and "unhook:free_pgtables" in key
    stats = Stats()
    env = ENVIRONMENTS["xen-pv"]
    assert len(findings_of(res1, p1, stats, 0, env)) == 1
    assert findings_of(res2, p2, stats, 0, env) == []                    # the same bug: not a second finding


def test_a_second_run_that_finds_the_same_race_writes_no_second_file(tmp_path):
    """Issue 13: a second run into the same directory wrote ...-direct-2.yaml
    for the race of ...-direct.yaml (its witness differed: the table freed,
    then freed and reused).  The file written first is the reproducer; the
    second finding is its duplicate."""
    from fuzz import findings
    direct, xen = registry.strategy("direct"), registry.platform("xen-pv")
    reused_src = XENFLUSH.read_text()
    freed_src = reused_src.replace("  - {cpu: 0, op: access, addr: 0x600000, write: true}\n", "")
    written = []
    for src in (freed_src, reused_src):                  # two runs, two witnesses of one race
        program, _, v = _uaf(src)
        lit, stem = findings.build_litmus(program, direct, [direct], xen, v, finding_signature("direct", v),
                                          "xen-pv", "a test", tmp_path)
        written.append(findings.write(lit, stem, tmp_path, findings.existing(tmp_path)))
    first, second = written
    assert first.path is not None and second.path is None and second.duplicate_of == first.path
    assert [p.name for p in tmp_path.glob("*.yaml")] == [first.path.name]


def test_different_readers_are_different_races():
    a = triage.race_key(_uaf(XENFLUSH.read_text())[2])
    lit = corpus.load(ROOT / "corpus" / "ptewalk+madvise+ptreclaim+batchfail.yaml")
    res = run_lockstep(lit.program, [registry.strategy("direct")], registry.platform("native"))
    b = triage.race_key(res.runs[0].verdict.violations[0])
    assert a != b and "use:pte_offset_map/pte_walk" in b and "unhook:pt_reclaim" in b


def test_divergence_key_drops_the_mm_and_address():
    assert triage.divergence_key("mm1 0x200000 mapped") == triage.divergence_key("mm0 0x7f0000 mapped") == "mapped"
    assert triage.divergence_key("leaked pages") == "leaked pages"


def test_fuzz_writes_one_reproducer_per_race(capsys, tmp_path):
    """Before issue 13 this budget wrote two files for direct on xen-pv (the
    table freed / freed and reused)."""
    code, out, _ = run(capsys, "fuzz", "--strategy", "direct", "--platform", "xen-pv", "--runs", "240",
                       "--jobs", "1", "--out", str(tmp_path), "--minimize-attempts", "60", "--format", "json")
    cell = json.loads(out)["cells"][0]
    races = [f["signature"] for f in cell["findings"]]
    assert len(races) == len(set(races)) == len(list(tmp_path.glob("*.yaml")))
    assert sum(1 for r in races if "|table-uaf|" in r) == 1


# -- new or known -------------------------------------------------------------------------------------

def test_labels_follow_safe_on_and_the_expected_matrix():
    expected = triage.default_expected()
    direct = registry.strategy("direct").meta["safe_on"]
    assert triage.label("direct", "xen-pv", direct, expected).known
    assert "SAFE_ON" in triage.label("direct", "xen-pv", direct, expected).why
    assert not triage.label("direct", "native", direct, expected).known
    assert not triage.label("full-rcu", "xen-pv", registry.strategy("full-rcu").meta["safe_on"], expected).known
    # no SAFE_ON: the strategy claims every environment; the expected matrix still knows its U cells
    assert not triage.label("mine", "xen-pv", (), expected).known
    assert triage.label("semi-rcu", "native+pt-reclaim", (), expected).known
    assert triage.label("semi-rcu", "native+pt-reclaim", (), expected).basis == "expected matrix"
    assert triage.divergence_label([("full-rcu", ()), ("direct", direct)], "xen-pv", expected).known
    assert not triage.divergence_label([("full-rcu", ()), ("semi-rcu", ())], "xen-pv", expected).known


def test_fuzz_summarises_known_findings_instead_of_listing_them(capsys, tmp_path):
    code, out, _ = run(capsys, "fuzz", "--strategy", "direct", "--strategy", "full-rcu", "--platform", "xen-pv",
                       "--runs", "60", "--jobs", "1", "--out", str(tmp_path), "--minimize-attempts", "30")
    assert code == 1
    assert "known: direct, outside its SAFE_ON: 1 finding (table-uaf) on xen-pv:" in out
    assert "U direct:" not in out                                       # not listed like a new bug
    assert "0 new, 1 known" in out
    code, out, _ = run(capsys, "fuzz", "--strategy", "direct", "--strategy", "full-rcu", "--platform", "xen-pv",
                       "--runs", "60", "--jobs", "1", "--no-write", "--minimize-attempts", "30", "--format", "json")
    f = json.loads(out)["cells"][0]["findings"][0]
    assert f["status"] == "known" and "does not claim xen-pv" in f["known_because"]


def test_a_planted_bug_where_its_strategy_claims_safety_is_new(capsys):
    code, out, _ = run(capsys, "fuzz", "--strategy-file", SKIPPED, "--env", "xen-pv+batch-fail", "--runs", "40",
                       "--jobs", "1", "--no-write", "--minimize-attempts", "30")
    assert code == 1 and "U sync-ipi-always-skipped: table-uaf" in out and "1 new, 0 known" in out


# -- divergences must replay from their file -----------------------------------------------------------

POPULATED_THEN_UNMAPPED = """\
shootdown: 1
cpus: 1
vmas:
  - {start: 0x200000, len: 0x200000}
ops:
  - {cpu: 0, op: populate, addr: 0x200000, len: 0x2000}
  - {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}
"""


def test_replays_divergence_reads_the_file_back():
    lit = corpus.parse(POPULATED_THEN_UNMAPPED, "d.yaml")
    broken = registry.strategy(str(MUT / "oracle_drop_pages.py"))
    native = registry.platform("native")
    pair = [registry.strategy("direct"), broken]
    assert run_lockstep(lit.program, pair, native).divergences
    assert triage.replays_divergence(lit, pair, native, ROOT, "leaked pages")
    assert not triage.replays_divergence(lit, [registry.strategy("direct"), registry.strategy("full-rcu")],
                                         native, ROOT, "leaked pages")


def test_a_divergence_that_does_not_replay_is_a_defect_not_a_finding(capsys, tmp_path, monkeypatch):
    """What explore saw in issue 13: two divergences that `shootdown run` did
    not reproduce.  Such a divergence is reported as a defect of the check
    (exit 1), never as a finding."""
    monkeypatch.setattr(triage, "replays_divergence", lambda *a, **k: False)
    code, out, _ = run(capsys, "fuzz", "--strategy", "direct", "--strategy-file", str(MUT / "oracle_drop_pages.py"),
                       "--platform", "native", "--runs", "20", "--jobs", "1", "--out", str(tmp_path),
                       "--minimize-attempts", "20")
    assert code == 1
    assert "DEFECT: a divergence (leaked pages)" in out and "unreplayable divergences: 1" in out
    data = json.loads(run(capsys, "fuzz", "--strategy", "direct", "--strategy-file", str(MUT / "oracle_drop_pages.py"),
                          "--platform", "native", "--runs", "20", "--jobs", "1", "--no-write",
                          "--minimize-attempts", "20", "--format", "json")[1])
    assert data["unreplayable_divergences"] and all(not f["signature"].startswith("divergence|")
                                                    for f in data["cells"][0]["findings"] if f["replayed"] is not False)
    assert data["violations"] == sum(1 for f in data["cells"][0]["findings"] if f["replayed"] is not False)


# -- base versus patch ---------------------------------------------------------------------------------

def test_compare_cells_and_baseline_evidence():
    assert triage.compare_cells({"a": "U", "b": "U", "c": "S", "d": "S"}, {"a": "S", "b": "U", "c": "U"}) == {
        "a": "regression", "b": "inherited", "c": "fixed", "d": "clean"}
    program, res, v = _uaf(XENFLUSH.read_text())
    xen = registry.platform("xen-pv")
    assert triage.baseline_evidence(program, registry.strategy("direct"), xen, triage.race_key(v), ["table-uaf"]) \
        == "direct fails table-uaf on this reproducer"
    assert triage.baseline_evidence(program, registry.strategy("semi-rcu"), xen, triage.race_key(v),
                                    ["table-uaf"]) == ""


def test_matrix_baseline_regression_and_inherited(capsys, tmp_path):
    code, out, _ = run(capsys, "matrix", "--strategy-file", SKIPPED, "--baseline", "semi-rcu",
                       "--env", "xen-pv+batch-fail", "--env", "native+pt-reclaim", "--env", "native",
                       "--runs", "100", "--jobs", "1", "--no-reproducers", "-q")
    assert code == 1                                                    # one regression
    assert "REGRESSION: U here, semi-rcu S: sync-ipi-always-skipped @ xen-pv+batch-fail (table-uaf)" in out
    assert "inherited: semi-rcu is U here too: sync-ipi-always-skipped @ native+pt-reclaim" in out
    assert "1 regression, 1 inherited, 0 fixed, 1 clean" in out


def test_matrix_baseline_with_only_inherited_failures_exits_0(capsys, tmp_path):
    """The issue's command, on the environments where skip-sync-ipi can fail:
    wherever it is U, semi-rcu (the kernel's scheme it patches) is U too."""
    code, out, _ = run(capsys, "matrix", "--strategy-file", "docs/examples/skip_sync_ipi.py", "--baseline",
                       "semi-rcu", "--env", "native+pt-reclaim", "--env", "xen-pv+batch-fail",
                       "--runs", "100", "--jobs", "1", "--no-reproducers", "-q")
    assert code == 0
    assert "0 regressions, 1 inherited" in out


def test_fuzz_baseline_exit_follows_regressions(capsys):
    code, out, _ = run(capsys, "fuzz", "--strategy-file", SKIPPED, "--baseline", "semi-rcu",
                       "--env", "xen-pv+batch-fail", "--runs", "40", "--jobs", "1", "--no-write",
                       "--minimize-attempts", "30")
    assert code == 1 and "U REGRESSION  sync-ipi-always-skipped: table-uaf" in out
    assert "against baseline semi-rcu: 1 regression" in out
    code, out, _ = run(capsys, "fuzz", "--strategy-file", "docs/examples/skip_sync_ipi.py", "--baseline", "semi-rcu",
                       "--env", "native+pt-reclaim+batch-fail", "--runs", "40", "--jobs", "1", "--no-write",
                       "--minimize-attempts", "30")
    assert code == 0 and "U inherited  skip-sync-ipi: table-uaf" in out and ": 0 regressions" in out


# -- JUnit ----------------------------------------------------------------------------------------------

def validate_junit(path: Path) -> ET.Element:
    """The JUnit XML shape CI systems read: counts that add up, every case
    named and timed, failures and errors with a message and a type."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    total = {"tests": 0, "failures": 0, "errors": 0}
    for suite in root:
        assert suite.tag == "testsuite" and suite.get("name")
        cases = list(suite)
        assert all(c.tag == "testcase" for c in cases)
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
        assert int(suite.get("errors")) == sum(1 for c in cases if c.find("error") is not None)
        for c in cases:
            assert c.get("classname") and c.get("name") and float(c.get("time")) >= 0
            for p in c.findall("failure") + c.findall("error"):
                assert p.get("message") and p.get("type") and (p.text or "").strip()
        for k in total:
            total[k] += int(suite.get(k))
    for k, v in total.items():
        assert int(root.get(k)) == v
    return root


def test_fuzz_writes_junit_xml(capsys, tmp_path):
    report = tmp_path / "ci" / "junit.xml"
    code, out, err = run(capsys, "fuzz", "--strategy-file", SKIPPED, "--env", "xen-pv+batch-fail", "--env", "native",
                         "--runs", "40", "--jobs", "1", "--out", str(tmp_path / "out"), "--minimize-attempts", "30",
                         "--junit", str(report))
    assert code == 1 and "JUnit report written" in err
    root = validate_junit(report)
    cases = root.findall(".//testcase")
    assert len(cases) == 2                                              # one per cell
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("classname") for c in failed] == ["shootdown.fuzz.xen-pv+batch-fail"]
    f = failed[0].find("failure")
    assert f.get("type") == "table-uaf" and "new: sync-ipi-always-skipped table-uaf" in f.get("message")
    assert "reproducer: " in f.text and ".yaml" in f.text and "check: table-uaf" in f.text
    assert "CPU0" in f.text and "<== UAF-TABLE" in f.text               # the race diagram


def test_matrix_writes_junit_xml_one_case_per_cell(capsys, tmp_path):
    report = tmp_path / "m.xml"
    code, out, err = run(capsys, "matrix", "--strategy", "direct", "--env", "xen-pv", "--env", "native",
                         "--runs", "20", "--jobs", "1", "--out", str(tmp_path / "r"), "--junit", str(report), "-q")
    root = validate_junit(report)
    cases = {c.get("name"): c for c in root.findall(".//testcase")}
    assert set(cases) == {"xen-pv", "native"}
    assert cases["xen-pv"].find("failure") is None                      # known: direct does not claim xen-pv
    assert "known: direct does not claim xen-pv" in cases["xen-pv"].find("system-out").text


def test_make_fuzz_passes_junit():
    out = subprocess.run(["make", "-n", "fuzz", "JUNIT=build/j.xml"], capture_output=True, text=True, cwd=ROOT).stdout
    assert "--junit build/j.xml" in out and "--safe-on" in out
    out = subprocess.run(["make", "-n", "fuzz", "FUZZ_RUNS=3"], capture_output=True, text=True, cwd=ROOT).stdout
    assert "--runs 3" in out and "--budget" not in out


def test_make_fuzz_writes_valid_junit_xml(tmp_path):
    """The must-show itself: `make fuzz JUNIT=...` (canary, then every SAFE_ON
    cell of the built-ins; one program per cell) writes a report CI reads."""
    from fuzz.cli import resolve_strategies
    from fuzz.safe_on import safe_on_cells
    report = tmp_path / "ci" / "junit.xml"
    p = subprocess.run(["make", "-o", ".venv/.installed", "fuzz", f"BIN={Path(sys.executable).parent}",
                        "FUZZ_RUNS=1", f"JUNIT={report}"], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "canary: planted bug" in p.stdout
    root = validate_junit(report)
    cells = safe_on_cells(resolve_strategies(None, None))
    cases = root.findall(".//testcase")
    assert sorted(c.get("classname") for c in cases) == sorted(f"shootdown.fuzz.{c.env}" for c in cells)
    assert root.get("failures") == "0" and root.get("errors") == "0"


def test_a_failed_canary_is_in_the_junit_report(capsys, tmp_path, monkeypatch):
    """make fuzz stops when its canary is not found: CI must see a failed
    report, not a missing one."""
    import fuzz.safe_on
    monkeypatch.setattr(fuzz.safe_on, "canary", lambda *a, **k: (False, "CANARY FAILED: the planted bug x"))
    report = tmp_path / "j.xml"
    code, out, err = run(capsys, "fuzz", "--safe-on", "--runs", "1", "--no-write", "--junit", str(report))
    assert code == 1 and "CANARY FAILED" in out
    root = validate_junit(report)
    assert root.get("errors") == "1" and root.find(".//error").get("type") == "canary"


def test_junit_escapes_and_counts():
    suites = [junit.Suite("s", [junit.Case("c", "a<b>&\x01", 1.5, failures=[junit.Problem("m\"", "t", "x\x02y")]),
                                junit.Case("c", "ok", 0.5, out="fine")])]
    p = Path(__file__).parent / ".junit-test.xml"
    try:
        junit.write(p, suites)
        root = validate_junit(p)
        assert root.get("tests") == "2" and root.get("failures") == "1"
        assert root.find(".//testcase").get("name") == "a<b>&?"
    finally:
        p.unlink(missing_ok=True)


# -- progress without a terminal -------------------------------------------------------------------------

def test_periodic_progress_prints_a_line_every_interval():
    t = [0.0]
    stream = io.StringIO()
    p = PeriodicProgress(stream, every=30.0, clock=lambda: t[0])
    for now in (1, 10, 29.9, 30.0, 45, 59, 60.5, 200):
        t[0] = now
        p(f"cell  {now:.0f}s  programs\n")
    lines = stream.getvalue().splitlines()
    assert lines == ["[+0m30s] cell 30s programs", "[+1m00s] cell 60s programs", "[+3m20s] cell 200s programs"]


def test_fuzz_without_a_terminal_prints_progress_lines(capsys, monkeypatch):
    import fuzz.report
    monkeypatch.setattr(fuzz.report, "PROGRESS_EVERY", 0.0)
    code, out, err = run(capsys, "fuzz", "--strategy", "full-rcu", "--platform", "native", "--runs", "30",
                         "--length", "16", "--jobs", "1", "--no-write")
    assert code == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("[+")]
    assert lines and "programs" in lines[-1] and "\r" not in err


def test_matrix_without_a_terminal_prints_status_lines(capsys, monkeypatch, tmp_path):
    """A matrix cell's budget can be long: without a terminal a status line
    comes every PROGRESS_EVERY seconds (here: at every look), not only when a
    cell ends."""
    import fuzz.report
    monkeypatch.setattr(fuzz.report, "PROGRESS_EVERY", 0.0)
    code, out, err = run(capsys, "matrix", "--strategy", "full-rcu", "--env", "native", "--runs", "20",
                         "--jobs", "1", "--out", str(tmp_path))
    assert code == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("[+")]
    assert lines and all("cells done" in ln for ln in lines)
    assert any("0/1 cells done" in ln for ln in lines)
    from fuzz.matrix import CellSpec, _Matrix
    m = _Matrix([CellSpec("full-rcu", "native"), CellSpec("direct", "xen-pv")], None)
    m.cells[1].inflight = 1
    assert m.status() == "0/2 cells done; working on direct @ xen-pv"
