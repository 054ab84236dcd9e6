"""Behaviour-preservation check for performance work on the simulator and oracle.

Runs a fixed, deterministic matrix of programs and records, per run, a digest
of everything observable: the history fingerprint (every event, in order), the
history's meta (outcome, steps, the recorded schedule), and the verdict
(outcome, every violation with its check, summary, witness sequence numbers
and extras, the behaviour counts), plus the divergences of lockstep runs.

    .venv/bin/python bench/golden.py --record /tmp/golden.json   # before changing anything
    .venv/bin/python bench/golden.py --check  /tmp/golden.json   # after every change

Inputs other people edit (corpus files, planted bugs) are keyed by their
content: an edited file becomes a new case, reported and not compared.  To
compare planted bugs across their edits, record and check with the same
frozen copy (``--mutants DIR``).  To record from a pristine tree while the work
tree has changes, export it (``git archive HEAD | tar -x -C DIR``), copy this
file into DIR/bench and run it there.

The matrix (about 1,350 cases, 2,000 machine runs):

* generated programs (fuzz.generate, 32 operations) for every strategy x
  platform x environment configuration (PT_RECLAIM off/on/v6.14-rc1, KVM,
  IOMMU, KVM+IOMMU+PT_RECLAIM, skipped mmu notifiers, THP), each under
  RandomChoices, PCTChoices (as fuzz.engine builds them) and the default
  replay policy;
* fuzz.engine-style lockstep (fuzz_one) on every environment of fuzz.envs
  (frozen here), both engines, divergences included;
* ByteChoices (the atheris driver), a tight step limit, longer programs;
* every corpus/*.yaml replayed with its schedule in lockstep, and under
  RandomChoices;
* every planted bug of tests/mutants on generated programs of its
  environment (alone under both engines, and in lockstep next to the
  built-ins), the planted platforms on the corpus of their platform;
* the generator alone (RandomDraw and BytesDraw programs);
* replays of recorded schedules (the Replay path of a reproducer).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz import corpus  # noqa: E402
from fuzz.generate import DEFAULT_WEIGHTS, BytesDraw, GenConfig, RandomDraw, generate  # noqa: E402
from fuzz.run import Lockstep, Run, run_lockstep, run_program  # noqa: E402
from impls import registry  # noqa: E402
from impls.machine.choices import DEFAULT_BIASES, ByteChoices, PCTChoices, RandomChoices  # noqa: E402
from impls.machine.plugin import PluginError  # noqa: E402
from impls.machine.program import Program  # noqa: E402

#: name -> (GenConfig keyword arguments, skip_mmu_notifiers)
CONFIGS: dict[str, tuple[dict, bool]] = {
    "off": ({}, False),
    "reclaim": ({"pt_reclaim": "on"}, False),
    "rc1": ({"pt_reclaim": "v6.14-rc1"}, False),
    "kvm": ({"kvm": True}, False),
    "iommu": ({"iommu": True}, False),
    "kvm+iommu+reclaim": ({"kvm": True, "iommu": True, "pt_reclaim": "on"}, False),
    "skip-notifiers": ({"kvm": True, "iommu": True}, True),
    "thp": ({"thp": True, "weights": {**DEFAULT_WEIGHTS, "collapse": 4.0, "khugepaged": 3.0, "split": 2.0,
                                      "pte_walk": 1.5}}, False),
}
#: fuzz.envs.ENVIRONMENTS as of the recording, frozen here so that edits to
#: fuzz/envs.py or fuzz/engine.py do not move the golden digests:
#: name -> (platform, pt_reclaim, weight overrides, bias overrides)
_NO_RCU, _NO_FAIL, _FAIL = {"pte_walk": 0.0}, {"alloc_fails:mmu_table_batch": 0.0}, \
    {"alloc_fails:mmu_table_batch": 1.0}
_RECLAIM = {"pte_walk": 6.0, "madvise": 5.0, "populate": 3.0}
ENVS: dict[str, tuple[str, str, dict, dict]] = {
    "native": ("native", "off", _NO_RCU, _NO_FAIL),
    "native+pt-reclaim": ("native", "on", _RECLAIM, {}),
    "xen-pv": ("xen-pv", "off", _NO_RCU, _NO_FAIL),
    "broadcast": ("broadcast", "off", _NO_RCU, _NO_FAIL),
    "native+batch-fail": ("native", "off", _NO_RCU, _FAIL),
    "xen-pv+batch-fail": ("xen-pv", "off", _NO_RCU, _FAIL),
    "broadcast+batch-fail": ("broadcast", "off", _NO_RCU, _FAIL),
    "native+pt-reclaim+batch-fail": ("native", "on", _RECLAIM, _FAIL),
    "native+lazy": ("native", "off", {**_NO_RCU, "switch": 6.0, "spec_walk": 6.0}, _NO_FAIL),
}
SEEDS_PER_CELL = 3
#: planted-bug strategies and platforms (``--mutants`` to use a frozen copy)
MUTANTS = ROOT / "tests" / "mutants"
LENGTH = 32
K_STEPS = max(50, LENGTH * 5)  # what fuzz.engine.fuzz_iter passes to PCT


def _violation(v) -> str:
    return repr((v.check, v.strategy, v.summary, tuple(e.seq for e in v.witness),
                 sorted((k, repr(x)) for k, x in v.extra.items()), v.signature()))


def run_digest(r: Run) -> str:
    h = r.history
    v = r.verdict
    parts = list(h.fingerprint())
    parts.append(repr(sorted((k, repr(x)) for k, x in h.meta.items())))
    parts.append(repr((h.strategy, h.platform, v.strategy, v.platform, v.outcome, v.ok)))
    parts.extend(_violation(x) for x in v.violations)
    parts.append(repr(v.behaviours))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def lockstep_digest(res: Lockstep) -> str:
    parts = [run_digest(r) for r in res.runs]
    parts.extend(_violation(d) for d in res.divergences)
    parts.append(repr(res.ok))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _program(seed: int, platform: str, cfg_name: str, length: int = LENGTH) -> Program:
    kw, skip = CONFIGS[cfg_name]
    prog = generate(RandomDraw(seed), GenConfig(platform=platform, length=length, **kw))
    if skip:
        prog = replace(prog, env=replace(prog.env, skip_mmu_notifiers=True))
    return prog


def _content(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _mutant_cases(mdir: Path, files: list[Path], all_strats: list, platforms: dict):
    for path in sorted(mdir.glob("*.py")) if mdir.is_dir() else ():
        if path.name.startswith("_"):
            continue
        try:
            ops, kind = registry.strategy(str(path)), "strategy"
        except PluginError:
            try:
                ops, kind = registry.platform(str(path)), "platform"
            except PluginError:
                continue  # not loadable with this tree: nothing to compare
        module = next(m for n, m in sys.modules.items() if n.startswith(f"_shootdown_{kind}_")
                      and getattr(m, "__file__", None) == str(path.resolve()))
        planted = getattr(module, "PLANTED", {})
        env = planted.get("env") or ("xen-pv" if "xen" in ops.name else
                                     "broadcast" if "broadcast" in ops.name else "native")
        if env not in ENVS:
            continue
        pname, reclaim, weights, biases = ENVS[env]
        cfg = GenConfig(platform=pname, length=LENGTH, pt_reclaim=reclaim,
                        weights={**DEFAULT_WEIGHTS, **weights})
        bias = {**DEFAULT_BIASES, **biases}
        tag = f"mutant/{path.name}@{_content(path)}"
        for k in range(8):
            seed = 70_000 + 10 * len(env) + k
            prog = generate(RandomDraw(seed), cfg)
            if kind == "strategy":
                plat = platforms[pname]
                yield (f"{tag}/gen{seed}/random",
                       lambda p=prog, s=ops, pl=plat, sd=seed, b=bias:
                       run_digest(run_program(p, s, pl, RandomChoices(sd, b))))
                yield (f"{tag}/gen{seed}/pct",
                       lambda p=prog, s=ops, pl=plat, sd=seed, b=bias:
                       run_digest(run_program(p, s, pl, PCTChoices(sd, p.cpus, K_STEPS, 2, b))))
                if k < 3:  # next to the built-ins: the divergence comparison
                    yield (f"{tag}/gen{seed}/lockstep",
                           lambda p=prog, s=ops, pl=plat, sd=seed, b=bias:
                           lockstep_digest(run_lockstep(p, [s, *all_strats], pl,
                                                        lambda: RandomChoices(sd, b))))
            else:
                yield (f"{tag}/gen{seed}/lockstep",
                       lambda p=prog, pl=ops, sd=seed, b=bias:
                       lockstep_digest(run_lockstep(p, all_strats, pl, lambda: RandomChoices(sd, b))))
        if kind == "platform":
            for cpath in files:
                lit = corpus.load(cpath)
                if lit.program.platform == pname:
                    yield (f"{tag}/{cpath.name}@{_content(cpath)}",
                           lambda p=lit.program, pl=ops: lockstep_digest(run_lockstep(p, all_strats, pl)))


def cases():
    """Yield (key, thunk) pairs; each thunk returns a digest string."""
    strategies = {n: registry.strategy(n) for n in registry.STRATEGIES}
    platforms = {n: registry.platform(n) for n in registry.PLATFORMS}

    # 1. generated programs, every strategy x platform x config x choice source
    for pi, pname in enumerate(registry.PLATFORMS):
        for ci, cname in enumerate(CONFIGS):
            for k in range(SEEDS_PER_CELL):
                seed = 1_000 * pi + 100 * ci + k
                prog = _program(seed, pname, cname)
                for sname, strat in strategies.items():
                    plat = platforms[pname]
                    yield (f"gen/{pname}/{cname}/{seed}/{sname}/random",
                           lambda p=prog, s=strat, pl=plat, sd=seed:
                           run_digest(run_program(p, s, pl, RandomChoices(sd))))
                    yield (f"gen/{pname}/{cname}/{seed}/{sname}/pct",
                           lambda p=prog, s=strat, pl=plat, sd=seed:
                           run_digest(run_program(p, s, pl, PCTChoices(sd, p.cpus, K_STEPS, 2))))
                    yield (f"gen/{pname}/{cname}/{seed}/{sname}/default",
                           lambda p=prog, s=strat, pl=plat: run_digest(run_program(p, s, pl)))

    # 2. fuzz.engine-style lockstep (fuzz_one) on every environment, both engines
    all_strats = list(strategies.values())
    for ei, (ename, (pname, reclaim, weights, biases)) in enumerate(ENVS.items()):
        cfg = GenConfig(platform=pname, length=LENGTH, pt_reclaim=reclaim,
                        weights={**DEFAULT_WEIGHTS, **weights})
        bias = {**DEFAULT_BIASES, **biases}
        plat = platforms[pname]
        for engine in ("random", "pct"):
            for i in range(6):
                s = 7_000_003 * (ei + 1) + i
                prog = generate(RandomDraw(s), cfg)
                if engine == "random":
                    factory = lambda s=s, b=bias: RandomChoices(s, b)  # noqa: E731
                else:
                    factory = lambda s=s, b=bias, n=prog.cpus: PCTChoices(s, n, K_STEPS, 2, b)  # noqa: E731
                yield (f"lockstep/{ename}/{engine}/{s}",
                       lambda p=prog, pl=plat, f=factory: lockstep_digest(run_lockstep(p, all_strats, pl, f)))

    # 3. ByteChoices (atheris), tight step limits, longer programs
    for pi, pname in enumerate(registry.PLATFORMS):
        plat = platforms[pname]
        for k in range(4):
            seed = 50_000 + 10 * pi + k
            prog = _program(seed, pname, "kvm+iommu+reclaim")
            data = random.Random(seed).randbytes(400)
            for sname, strat in strategies.items():
                yield (f"bytes/{pname}/{seed}/{sname}",
                       lambda p=prog, s=strat, pl=plat, d=data:
                       run_digest(run_program(p, s, pl, ByteChoices(d))))
                yield (f"steplimit/{pname}/{seed}/{sname}",
                       lambda p=prog, s=strat, pl=plat, sd=seed:
                       run_digest(run_program(p, s, pl, RandomChoices(sd), max_steps=40 + sd % 50)))
            long_prog = _program(seed, pname, "reclaim", length=96)
            for sname, strat in strategies.items():
                yield (f"long/{pname}/{seed}/{sname}",
                       lambda p=long_prog, s=strat, pl=plat, sd=seed:
                       run_digest(run_program(p, s, pl, RandomChoices(sd, switch_p=0.2))))

    # 4. the corpus, replayed with its schedule in lockstep and under random choices
    # (inputs other people edit are keyed by their content: an edited file is a
    # new case, reported but not compared)
    files = []
    for path in sorted((ROOT / "corpus").glob("*.yaml")):
        try:
            corpus.load(path)
        except corpus.CorpusError:
            continue  # not a litmus program
        files.append(path)
    for path in files:
        lit = corpus.load(path)
        plat = registry.platform(lit.program.platform)
        name = f"{path.name}@{_content(path)}"
        yield (f"corpus/{name}/replay",
               lambda p=lit.program, pl=plat: lockstep_digest(run_lockstep(p, all_strats, pl)))
        for seed in (7, 8):
            yield (f"corpus/{name}/random{seed}",
                   lambda p=lit.program, pl=plat, sd=seed:
                   lockstep_digest(run_lockstep(p, all_strats, pl, lambda sd=sd: RandomChoices(sd))))
    # planted bugs (violation paths of every check): each mutant strategy or
    # platform on generated programs of the environment it is planted in
    yield from _mutant_cases(MUTANTS, files, all_strats, platforms)

    # 6. the generator alone: the programs themselves, over more seeds
    for pi, pname in enumerate(registry.PLATFORMS):
        for ci, cname in enumerate(CONFIGS):
            yield (f"programs/{pname}/{cname}",
                   lambda pn=pname, cn=cname, base=1_000_000 * (pi + 1) + 10_000 * ci:
                   hashlib.sha256("\n".join(repr(_program(base + k, pn, cn)) for k in range(40)).encode())
                   .hexdigest())
        yield (f"programs/{pname}/bytes",
               lambda pn=pname, sd=pi: hashlib.sha256("\n".join(
                   repr(generate(BytesDraw(random.Random(sd * 100 + k).randbytes(200)), GenConfig(platform=pn)))
                   for k in range(40)).encode()).hexdigest())

    # 5. a recorded schedule replays (Replay with run-length entries and flips)
    for pi, pname in enumerate(registry.PLATFORMS):
        plat = platforms[pname]
        for k in range(4):
            seed = 90_000 + 10 * pi + k
            prog = _program(seed, pname, "reclaim")
            for sname, strat in strategies.items():
                def replayed(p=prog, s=strat, pl=plat, sd=seed) -> str:
                    first = run_program(p, s, pl, RandomChoices(sd))
                    again = run_program(p.with_schedule(first.history.meta["schedule"]), s, pl)
                    return run_digest(first) + run_digest(again)
                yield (f"replay/{pname}/{seed}/{sname}", replayed)


def compute() -> tuple[dict[str, str], float]:
    out: dict[str, str] = {}
    t0 = time.perf_counter()
    for key, thunk in cases():
        if key in out:
            raise SystemExit(f"duplicate case key {key}")
        out[key] = thunk()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", metavar="FILE", help="compute the digests and write them to FILE")
    g.add_argument("--check", metavar="FILE", help="compute the digests and compare with FILE")
    ap.add_argument("--mutants", metavar="DIR", help="directory of planted-bug strategies and platforms "
                    "(default tests/mutants; pass a frozen copy to compare across their edits)")
    args = ap.parse_args(argv)
    if args.mutants:
        global MUTANTS
        MUTANTS = Path(args.mutants)
    digests, secs = compute()
    overall = hashlib.sha256("\n".join(f"{k} {v}" for k, v in digests.items()).encode()).hexdigest()
    runs = sum(1 for k in digests)
    if args.record:
        Path(args.record).write_text(json.dumps({"overall": overall, "digests": digests}, indent=0))
        print(f"recorded {runs} cases ({overall[:16]}) in {secs:.1f}s to {args.record}")
        return 0
    want = json.loads(Path(args.check).read_text())["digests"]
    common = [k for k in want if k in digests]
    bad = [k for k in common if digests[k] != want[k]]
    new = [k for k in digests if k not in want]
    gone = [k for k in want if k not in digests]
    for k in bad[:20]:
        print(f"MISMATCH {k}")
    if new or gone:
        print(f"note: {len(new)} cases not in the recording and {len(gone)} recorded cases not "
              "computed (an input file was edited or added); compared the other ones")
    if bad or len(common) < 0.9 * len(want):
        print(f"FAIL: {len(bad)} of {len(common)} compared cases differ ({secs:.1f}s)")
        return 1
    print(f"OK: {len(common)} cases identical ({overall[:16]}) in {secs:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
