"""JUnit XML reports, the format CI systems display (GitLab, Jenkins, GitHub
test reporters): ``<testsuites>`` of ``<testsuite>`` of ``<testcase>``, a
``<failure>`` for each finding that fails the case, an ``<error>`` for what
kept the case from being judged (a crash of the simulator, a divergence that
does not replay), ``<system-out>`` for what passed with a remark (known
findings).  ``shootdown fuzz --junit`` and ``shootdown matrix --junit`` write
one test case per cell.

The writer is xml.etree: text is escaped, characters XML 1.0 cannot carry
are replaced, and the counts on each suite are computed from its cases.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(s: str) -> str:
    return _NOT_XML.sub("?", s)


@dataclass
class Problem:
    message: str             # one line: the attribute CI systems show
    kind: str                # the ``type`` attribute: the check, or what went wrong
    text: str = ""           # the body: file, check, diagram


@dataclass
class Case:
    classname: str
    name: str
    seconds: float = 0.0
    failures: list[Problem] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    skipped: str | None = None
    out: str = ""


@dataclass
class Suite:
    name: str
    cases: list[Case] = field(default_factory=list)


def to_xml(suites: list[Suite]) -> str:
    root = ET.Element("testsuites")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
    for s in suites:
        counts = {"tests": len(s.cases), "failures": sum(1 for c in s.cases if c.failures),
                  "errors": sum(1 for c in s.cases if c.errors and not c.failures),
                  "skipped": sum(1 for c in s.cases if c.skipped is not None and not c.failures and not c.errors),
                  "time": sum(c.seconds for c in s.cases)}
        for k, v in counts.items():
            totals[k] += v
        se = ET.SubElement(root, "testsuite", name=_clean(s.name), tests=str(counts["tests"]),
                           failures=str(counts["failures"]), errors=str(counts["errors"]),
                           skipped=str(counts["skipped"]), time=f"{counts['time']:.3f}")
        for c in s.cases:
            ce = ET.SubElement(se, "testcase", classname=_clean(c.classname), name=_clean(c.name),
                               time=f"{c.seconds:.3f}")
            for p in c.failures:
                fe = ET.SubElement(ce, "failure", message=_clean(p.message), type=_clean(p.kind))
                fe.text = _clean(p.text)
            for p in c.errors if not c.failures else ():
                ee = ET.SubElement(ce, "error", message=_clean(p.message), type=_clean(p.kind))
                ee.text = _clean(p.text)
            if c.skipped is not None and not c.failures and not c.errors:
                ET.SubElement(ce, "skipped", message=_clean(c.skipped))
            if c.out:
                ET.SubElement(ce, "system-out").text = _clean(c.out)
    for k in ("tests", "failures", "errors", "skipped"):
        root.set(k, str(totals[k]))
    root.set("time", f"{totals['time']:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(path: str | Path, suites: list[Suite]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(to_xml(suites), encoding="utf-8")
    tmp.replace(p)
    return p


def finding_text(file: str | None, check: str, summary: str, diagram: str, extra: str = "") -> str:
    """A failure's body: where the reproducer is, how to replay it, the check
    and its summary, then the race diagram."""
    lines = [f"reproducer: {file or '(not written)'}"]
    if file:
        lines.append(f"replay: shootdown run {file}    draw: shootdown explain {file}")
    lines.append(f"check: {check}")
    if summary:
        lines.append(summary)
    if extra:
        lines.append(extra)
    if diagram:
        lines += ["", diagram.rstrip()]
    return "\n".join(lines) + "\n"
