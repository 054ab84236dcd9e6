"""Campaigns on the execution layer (fuzz/work.py, fuzz/execution.py):
deterministic results whatever runs them (this process, local workers, a
real Dask LocalCluster), a killed worker, SIGTERM, and the watchdog.

Budgets are program counts; where a test must wait for something to happen
in another process, the wait is bounded but the assertion is never on time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz import corpus
from fuzz.cli import main
from fuzz.execution import Done, ExecutionError, LocalPool, check_jobs, executor
from fuzz.session import CellSpec, Plan, Session
from fuzz.work import Bundle, FuzzUnit, make_cell, merge_findings, plugin_ref, position, run_unit

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "tests" / "mutants"
#: what differs between two runs of the same campaign: timings and where it ran
TIMINGS = {"seconds", "programs_per_s", "fuzz_seconds", "found_after_s", "minimize_seconds", "jobs", "executor",
           "out", "file", "duplicate_of"}
FUZZ = ["--platform", "xen-pv", "--platform", "broadcast", "--runs", "40", "--seed", "7", "--format", "json"]


def timings_aside(d):
    if isinstance(d, dict):
        return {k: timings_aside(v) for k, v in d.items() if k not in TIMINGS}
    if isinstance(d, list):
        return [timings_aside(x) for x in d]
    return d


def fuzz_json(capsys, out: Path, *argv: str) -> dict:
    code = main(["fuzz", *FUZZ, "--out", str(out), *argv])
    data = json.loads(capsys.readouterr().out)
    assert code == data["exit"]
    return data


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.yaml"))}


# -- units ----------------------------------------------------------------------------------------


def test_positions_alternate_engines_after_the_seeds():
    assert [position(p, ("random", "pct"), 2, 1) for p in range(6)] == [
        ("seed", 0), ("random", 0), ("random", 1), ("pct", 0), ("pct", 1), ("random", 2)]
    assert position(41, ("random",), 1, 0) == ("random", 41)


def test_the_lowest_position_wins_per_signature():
    class F:
        def __init__(self, sig: str) -> None:
            self.signature = sig
    a, b, c = F("x"), F("x"), F("y")
    assert [(p, f.signature) for p, f in merge_findings([(9, a), (3, b), (5, c)])] == [(3, "x"), (5, "y")]


def test_units_do_not_depend_on_how_the_positions_are_cut():
    blobs: dict = {}
    cell = make_cell(["direct"], "xen-pv", "xen-pv", blobs)
    whole = run_unit(FuzzUnit(cell, 0, 32, 0, 12), blobs)
    parts = [run_unit(FuzzUnit(cell, 0, 32, a, b), blobs) for a, b in ((0, 5), (5, 6), (6, 12))]
    assert whole.done == 12 and sum(r.done for r in parts) == 12
    assert [(p, f.signature) for p, f in merge_findings(whole.findings)] == \
        [(p, f.signature) for p, f in merge_findings(x for r in parts for x in r.findings)]
    assert whole.stats.programs == sum(r.stats.programs for r in parts)


def test_a_plugin_travels_with_the_helpers_it_loads():
    """A planted bug loads tests/mutants/_rebind.py by path: both are in its bundle."""
    blobs: dict = {}
    ref = plugin_ref("platform", str(MUTANTS / "broadcast_deferred_tlbsync.py"), blobs)
    bundle = blobs[ref.blob]
    assert isinstance(bundle, Bundle) and ref.digest == bundle.digest
    assert {rel for rel, _ in bundle.files} == {"broadcast_deferred_tlbsync.py", "_rebind.py"}
    assert plugin_ref("strategy", "direct") == plugin_ref("strategy", "direct") and not plugin_ref(
        "strategy", "direct").is_file


def test_a_unit_for_other_code_is_refused():
    blobs: dict = {}
    unit = FuzzUnit(make_cell(["direct"], "native", "native", blobs), 0, 16, 0, 1, version="0+someone-else")
    res = run_unit(unit, blobs)
    assert res.error and "the campaign needs 0+someone-else" in res.error and res.done == 0


def test_jobs_are_checked():
    assert check_jobs(1) == 1
    with pytest.raises(ExecutionError, match="--jobs 1000: at most"):
        check_jobs(1000)


def test_too_many_jobs_is_bad_input(capsys):
    assert main(["fuzz", "--runs", "1", "--jobs", "1000"]) == 2
    err = capsys.readouterr().err
    assert "--jobs 1000: at most" in err and "--cluster" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("budget", ["nan", "inf", "-1"])
def test_a_budget_must_be_a_finite_positive_number(capsys, budget):
    assert main(["fuzz", "--budget", budget]) == 2
    assert "expected a positive number" in capsys.readouterr().err


# -- deterministic results, whatever runs them --------------------------------------------------------


@pytest.mark.dask
def test_same_findings_and_files_with_one_job_two_jobs_and_a_dask_cluster(capsys, tmp_path):
    distributed = pytest.importorskip("distributed")
    one = fuzz_json(capsys, tmp_path / "one", "--jobs", "1")
    two = fuzz_json(capsys, tmp_path / "two", "--jobs", "2")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        dask = fuzz_json(capsys, tmp_path / "dask", "--cluster", cluster.scheduler_address)
    assert dask["executor"].startswith("Dask cluster") and two["executor"] == "2 local worker processes"
    findings = [f for c in one["cells"] for f in c["findings"]]
    assert len(findings) >= 2 and one["exit"] == 1              # not vacuous: there is something to agree on
    assert timings_aside(one) == timings_aside(two) == timings_aside(dask)
    assert files(tmp_path / "one") == files(tmp_path / "two") == files(tmp_path / "dask")
    assert len(files(tmp_path / "one")) == len(findings)
    assert all(c["covered"] == [[0, 40]] for c in one["cells"])


@pytest.mark.dask
def test_matrix_on_a_dask_cluster_matches_local_workers():
    distributed = pytest.importorskip("distributed")
    from fuzz import matrix
    specs = [matrix.CellSpec(s, e, runs=40, corpus_seeds=False) for s in ("direct", "semi-rcu")
             for e in ("xen-pv", "native+batch-fail")]
    local = matrix.run_matrix(specs, jobs=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        dask = matrix.run_matrix(specs, cluster=cluster.scheduler_address)
    key = [(c.strategy, c.env, c.verdict, c.checks, c.programs, c.pct_programs, c.found_by) for c in local]
    assert key == [(c.strategy, c.env, c.verdict, c.checks, c.programs, c.pct_programs, c.found_by) for c in dask]
    assert any(c.verdict == "U" for c in local) and any(c.verdict == "S" for c in local)


# -- a worker killed in the middle of a campaign --------------------------------------------------------


class _KillOne(LocalPool):
    """A local pool that SIGKILLs one busy worker once the first unit is back."""

    def __init__(self, jobs: int) -> None:
        super().__init__(jobs)
        self.killed: int | None = None

    def poll(self, timeout: float):
        events = super().poll(timeout)
        if self.killed is None and any(isinstance(e, Done) for e in events):
            busy = [w for w in self.workers if w.busy is not None]
            if busy:
                self.killed = busy[0].proc.pid
                os.kill(self.killed, signal.SIGKILL)
        return events


def test_a_killed_worker_loses_nothing(tmp_path):
    plan = Plan([CellSpec(("direct", "semi-rcu"), "xen-pv", "xen-pv")], runs=60, seed=3, length=64, jobs=2,
                out=tmp_path / "ref", minimize_attempts=500)
    ref = Session(plan).run()
    plan.out = tmp_path / "killed"
    pool = _KillOne(2)
    try:
        got = Session(plan).run(pool)
    finally:
        pool.close()
    assert pool.killed is not None
    assert len(got.lost_workers) == 1 and f"worker process {pool.killed} killed by SIGKILL" in got.lost_workers[0]
    assert got.crashes == 0 and not got.interrupted
    c, r = got.cells[0], ref.cells[0]
    assert c.covered == [[0, 60]] and c.stats.programs == r.stats.programs == 60
    assert [(f.signature, f.iteration) for f in c.findings] == [(f.signature, f.iteration) for f in r.findings]
    assert files(tmp_path / "killed") == files(tmp_path / "ref") and r.findings


class _KillOneDask:
    """Wraps a DaskCluster executor: SIGKILLs one worker process once the first unit is back."""

    def __init__(self, address: str) -> None:
        from fuzz.execution import DaskCluster
        self.ex = DaskCluster(address)
        self.killed: int | None = None

    def __getattr__(self, name):
        return getattr(self.ex, name)

    def poll(self, timeout: float):
        events = self.ex.poll(timeout)
        if self.killed is None and any(isinstance(e, Done) for e in events):
            pids = self.ex.client.run(os.getpid)
            self.killed = pids[sorted(pids)[0]]
            os.kill(self.killed, signal.SIGKILL)
        return events


@pytest.mark.dask
def test_a_killed_dask_worker_is_reported_and_its_units_run_elsewhere(tmp_path):
    distributed = pytest.importorskip("distributed")
    plan = Plan([CellSpec(("direct", "semi-rcu"), "xen-pv", "xen-pv")], runs=120, seed=3, length=64, jobs=1,
                out=tmp_path / "ref", minimize_attempts=500)
    ref = Session(plan).run()
    plan.out = tmp_path / "dask"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        ex = _KillOneDask(cluster.scheduler_address)
        try:
            got = Session(plan).run(ex)
        finally:
            ex.close()
    assert ex.killed is not None and got.crashes == 0
    assert got.lost_workers and "left the cluster" in got.lost_workers[0]
    assert got.cells[0].covered == [[0, 120]]
    assert [(f.signature, f.iteration) for f in got.cells[0].findings] == \
        [(f.signature, f.iteration) for f in ref.cells[0].findings]
    assert files(tmp_path / "dask") == files(tmp_path / "ref")


# -- SIGTERM ------------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_for(what, limit: float = 300.0) -> None:
    end = time.monotonic() + limit
    while not what():
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.1)


def test_sigterm_prints_the_summary_keeps_the_findings_and_leaves_no_process(tmp_path):
    out = tmp_path / "crashes"
    proc = subprocess.Popen([sys.executable, "-m", "fuzz", "fuzz", "--strategy", "direct", "--platform", "xen-pv",
                             "--jobs", "2", "--budget", "3000", "--length", "64", "--out", str(out),
                             "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        _wait_for(lambda: list(out.glob("*.yaml")) or proc.poll() is not None)
        workers = _children(proc.pid)
        assert len(workers) == 2
        written = files(out)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    data = json.loads(stdout)
    assert data["interrupted"] and data["exit"] == 1 == proc.returncode, stderr
    assert data["violations"] >= 1 and not data["crashes"] and data["timed"]
    cell = data["cells"][0]
    assert cell["covered"] and cell["covered"][0][0] == 0 and cell["programs"] > 0
    for name, text in written.items():                   # intact: still there, still the same, still loads
        assert (out / name).read_bytes() == text
        corpus.load(out / name)
    assert {Path(f["file"]).name for f in cell["findings"] if f["file"]} >= set(written)
    assert not any(_alive(w) for w in workers)


def test_workers_die_with_their_parent(tmp_path):
    """A parent killed with SIGKILL (no chance to clean up): its workers go too."""
    script = ("import time\nfrom fuzz.execution import LocalPool\np = LocalPool(2)\n"
              "print(*p.pids, flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        workers = [int(x) for x in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(w) for w in workers)
    finally:
        proc.kill()
        proc.communicate()
    _wait_for(lambda: not any(_alive(w) for w in workers), 60)


# -- the watchdog --------------------------------------------------------------------------------------------

LOOPING = '''\
"""A strategy whose table-batch flush never yields and never returns."""
from impls.native import mmu_gather as _native

NAME = "looping"
pte_free_tlb = _native.pte_free_tlb
pmd_free_tlb = _native.pmd_free_tlb
pud_free_tlb = _native.pud_free_tlb


def tlb_flush_mmu(tlb):
    n = 0
    while True:
        n += 1
    yield
'''


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_hook_that_never_yields_is_stopped_and_reported(capsys, tmp_path, jobs):
    f = tmp_path / "looping.py"
    f.write_text(LOOPING)
    code = main(["fuzz", "--strategy-file", str(f), "--platform", "native", "--budget", "600", "--jobs", jobs,
                 "--watchdog", "1", "--length", "16", "--seed", "4", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1
    assert "WATCHDOG: hook tlb_flush_mmu() (looping.py:12) of strategy 'looping' ran more than 1 CPU seconds " \
           "without yielding, in program iteration " in out
    assert "(engine random, --seed 4, iteration seed " in out and "the run was stopped" in out


def test_the_watchdog_reports_the_program_it_stopped(tmp_path):
    f = tmp_path / "looping.py"
    f.write_text(LOOPING)
    plan = Plan([CellSpec((str(f),), "native", "native")], runs=50, seed=4, length=16, jobs=1, out=tmp_path,
                watchdog=1.0)
    s = Session(plan).run()
    w = s.cells[0].watchdogs[0]
    assert (w["hook"], w["file"], w["strategy"], w["seed"]) == ("tlb_flush_mmu", "looping.py", "looping", 4)
    assert w["iteration_seed"] == 4 * 1_000_003 + w["iteration"]
    assert s.exit_code == 1 and s.cells[0].stats.programs < 50


@pytest.mark.dask
def test_executor_chooses_the_backend(monkeypatch):
    assert executor(1).description == "this process"
    pool = executor(2)
    try:
        assert pool.description == "2 local worker processes"
    finally:
        pool.close()
    monkeypatch.setenv("SHOOTDOWN_CLUSTER", "tcp://127.0.0.1:1")
    monkeypatch.setattr("fuzz.execution.CONNECT_TIMEOUT", "1s")
    with pytest.raises(ExecutionError, match="cannot reach the Dask scheduler"):
        executor(1)


# -- throughput guards ------------------------------------------------------------------------------------


def test_a_finished_run_leaves_no_reference_cycles():
    """The fuzz loop pauses the cycle collector (fuzz.engine.PausedGC) and
    collects every 64 programs; that is cheap only if a finished run is freed
    by reference counting alone.  A closure that refers to itself, or an
    object pointing back at its owner, keeps a whole machine and its history
    alive until a collection: break the cycle (see Machine.release())."""
    import gc

    from fuzz.engine import fuzz_program, pct_k_steps
    from fuzz.envs import ENVIRONMENTS
    from impls import registry
    strategies = [registry.strategy(s) for s in registry.STRATEGIES]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for env in ENVIRONMENTS.values():
            platform = registry.platform(env.platform)
            for i in range(3):
                fuzz_program(strategies, platform, env, "random", 11, i, env.gen_config(32), pct_k_steps(32))
        gc.collect()
        # only the simulator's own objects: garbage of other libraries (a Dask
        # client's event loop, from an earlier test) may be collected here too
        left = sorted({type(o).__name__ for o in gc.garbage
                       if type(o).__module__.split(".")[0] in ("impls", "oracle", "fuzz")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not left, f"runs left reference cycles through: {', '.join(left)}"


def test_the_summary_says_which_iterations_a_timed_run_covered():
    from fuzz.commands.fuzz import _covered_text, summary_text
    from fuzz.session import CellReport, Summary
    assert _covered_text([[0, 556]], "random", 0) == "iterations covered: 0-555 (iteration i runs seed 0 * 1000003 + i)"
    assert _covered_text([[0, 10], [12, 13]], "pct", 7).startswith("iterations covered: 0-9, 12 (")
    s = Summary("random", 7, 32, 2, timed=True)
    c = CellReport(CellSpec(("direct",), "native", "native"), "native [direct]", covered=[[0, 40]])
    c.stats.programs = 40
    s.cells.append(c)
    assert "iterations covered: 0-39 (iteration i runs seed 7 * 1000003 + i)" in summary_text(s)


def test_the_scaling_bench_runs_both_job_counts_and_prints_the_ratio():
    """bench/scaling.py is how the --jobs 2 speed-up of issue 12 is measured:
    it must run the same campaign at --jobs 1 and --jobs 2 through the CLI and
    print a ratio (no timing is asserted: the machine is shared)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "scaling.py"), "--runs", "8", "--repeats", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "repeat 1 --jobs 1:" in out.stdout and "repeat 1 --jobs 2:" in out.stdout
    assert out.stdout.count("exit 0") == 2, out.stdout   # both campaigns ran and found nothing
    assert "speed-up --jobs 2 over --jobs 1 (median wall ratio):" in out.stdout
