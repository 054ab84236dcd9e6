"""``shootdown explain``: the race diagram (text, CPU columns) and the HTML timeline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fuzz import corpus
from fuzz.cli import main
from fuzz.render import Story, html_timeline, text_diagram
from fuzz.run import run_program
from impls import registry

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
EXAMPLE_A = str(CORPUS / "gupfast+munmap+xenflush.yaml")


def explain(capsys, *argv):
    # the corpus names the planted-bug platforms of tests/mutants/: this repository's own files
    code = main(["explain", "--trust-plugins-under", str(ROOT), *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def example_a_text():
    lit = corpus.load(EXAMPLE_A)
    run = run_program(lit.program, registry.strategy("direct"), registry.platform(lit.program.platform))
    return text_diagram(Story(lit.program, run, title=lit.title, path=lit.path))


def _columns(text: str) -> tuple[str, dict[str, int]]:
    """The header line and the column where each lane title starts."""
    head = next(ln for ln in text.splitlines() if "CPU0" in ln and "CPU1" in ln)
    return head, {m.group(0): m.start() for m in re.finditer(r"CPU\d|RCU|IOMMU", head)}


def test_example_a_draws_a_column_per_cpu(example_a_text):
    head, cols = _columns(example_a_text)
    assert "CPU0 (munmap" in head and "CPU1 (gup_fast)" in head
    assert cols["CPU0"] < cols["CPU1"]
    lines = example_a_text.splitlines()
    # munmap's steps are drawn in CPU0's column, the walker's in CPU1's
    unhook = next(ln for ln in lines if "pmd_clear(pmdp)" in ln)
    assert unhook.index("pmd_clear") < cols["CPU1"]
    walk = next(ln for ln in lines if "pmd = *pmdp" in ln)
    assert walk.index("pmd = *pmdp") == cols["CPU1"]
    assert any("local_irq_disable()" in ln for ln in lines)
    assert any("hypercall (no IPI)" in ln for ln in lines)
    assert any(re.search(r"free PT pfn 0x4\b", ln) for ln in lines)


def test_example_a_lines_fit_in_100_columns(example_a_text):
    assert max(len(ln) for ln in example_a_text.splitlines()) <= 100


def test_example_a_marks_the_freed_table_read(example_a_text):
    lines = example_a_text.splitlines()
    marked = [i for i, ln in enumerate(lines) if ln.startswith("!!")]
    assert len(marked) == 1
    i = marked[0]
    row = " ".join(ln.strip() for ln in lines[i:i + 3])  # the row may wrap
    assert "#139" in row and "pte = PT[0]" in row and "freed memory" in row and "<== UAF-TABLE" in row
    _, cols = _columns(example_a_text)
    assert lines[i].index("pte = PT[0]") == cols["CPU1"]
    # the violating read comes after the free and the reuse of the frame, in history order
    order = [next(j for j, ln in enumerate(lines) if pat in ln)
             for pat in ("pmd = *pmdp", "free PT pfn 0x4", "alloc PT pfn 0x4, gen 2", "pte = PT[0]")]
    assert order == sorted(order)


def test_example_a_prints_summary_and_explanation(example_a_text):
    flat = " ".join(example_a_text.split())
    assert "UAF-TABLE (table-uaf): CPU1 gup_fast read table pfn 0x4 (generation 1) after it was freed" in flat
    assert "Flags a software walker (or a writer) that loaded" in flat
    assert "Hypercall and broadcast flushes do not wait for IRQ-off walkers" in flat
    assert "[witness #64 #94 #107 #119 #139]" in flat


def test_noise_is_collapsed(example_a_text):
    assert "sw_read" not in example_a_text and "who=" not in example_a_text
    assert example_a_text.count("\n") < 70


def test_cli_picks_the_violating_strategy_and_exits_1(capsys):
    code, out, err = explain(capsys, EXAMPLE_A)
    assert code == 1 and err == ""
    assert "strategy direct on platform xen-pv: U table-uaf  (as expected)" in out
    assert "other strategies: semi-rcu S, full-rcu S" in out


def test_cli_clean_strategy_is_drawn_and_exits_0(capsys):
    code, out, _ = explain(capsys, EXAMPLE_A, "--strategy", "semi-rcu")
    assert code == 0
    assert "Clean: no check fires for strategy semi-rcu" in out
    head, cols = _columns(out)
    assert "RCU" in cols  # the table waits for a grace period: the RCU column is drawn
    assert any("call_rcu(tlb_remove_table_rcu)" in ln for ln in out.splitlines())
    assert "!!" not in out


def test_cli_platform_override(capsys):
    code, out, _ = explain(capsys, EXAMPLE_A, "--strategy", "direct", "--platform", "native")
    assert code == 0
    assert "on platform native: S" in out
    assert "IPI to CPU1" in out


def test_html_is_standalone_with_lanes_and_the_violation(capsys, tmp_path):
    out_file = tmp_path / "a.html"
    code, out, err = explain(capsys, EXAMPLE_A, "--html", str(out_file))
    assert code == 1 and str(out_file) in err
    page = out_file.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=""", page)
    head = page[page.index("<thead>"):page.index("</thead>")]
    for lane in ("CPU0", "CPU1", "IPIs / hypercalls", "PT pfn 0x4"):
        assert lane in head
    vio = re.findall(r'<tr id="ev(\d+)" class="[^"]*\bvio\b', page)
    assert vio == ["139"]
    assert "&lt;== UAF-TABLE" in page
    assert "Flags a software walker (or a writer) that loaded" in page
    # the table's life is drawn: freed, then reused
    assert "t-freed" in page and "t-reused" in page
    # the story is visible without JS, the noise only behind the checkbox
    assert 'class="noise"' in page and "#all:checked ~ table tr.noise" in page


@pytest.mark.parametrize("name", [p.name for p in corpus.litmus_files(CORPUS) if p.parent == CORPUS])
def test_every_corpus_file_renders(name, tmp_path, capsys):
    path = str(CORPUS / name)
    lit = corpus.load(path)
    code, out, err = explain(capsys, path, "--html", str(tmp_path / "x.html"))
    want = 0 if all(lit.expect.get(s, "S") == "S" for s in registry.STRATEGIES) else 1
    assert code == want, err
    assert max(len(ln) for ln in out.splitlines()) <= 100
    assert "Traceback" not in err
    page = (tmp_path / "x.html").read_text()
    assert "http://" not in page and "https://" not in page
    if want:
        assert "!!" in out and 'class="story wit vio"' in page


def test_lazy_flush_skip_shows_the_missed_cpu(capsys):
    code, out, _ = explain(capsys, str(CORPUS / "lazytlb+munmap+skip-lazy-flush.yaml"))
    assert code == 1
    assert "CPU1 not flushed" in " ".join(out.split())
    assert "PSC caches PT pfn 0x4" in out  # the setup-time witness is drawn
    marked = [ln for ln in out.splitlines() if ln.startswith("!!")]
    assert any("free PT pfn 0x4" in ln for ln in marked)


def test_xen_stale_cr3_shows_the_refused_unpin(capsys):
    code, out, _ = explain(capsys, str(CORPUS / "xen+exit_mmap+stale-cr3-unpin.yaml"))
    assert code == 1
    flat = " ".join(out.split())
    assert "queue multicall MMUEXT_NEW_BASEPTR" in flat
    assert "xen_mc_flush(): issue MMUEXT_NEW_BASEPTR" in flat
    assert "Xen: unpin of PGD pfn 0x1 refused: still cr3 of CPU1 <== LEAKED-XEN-PIN" in flat


def test_narrow_width_is_respected(capsys):
    code, out, _ = explain(capsys, str(CORPUS / "kvm+iommu+munmap+skip-notifiers.yaml"), "--width", "72")
    assert code == 1
    assert max(len(ln) for ln in out.splitlines()) <= 72


@pytest.mark.parametrize("argv, fragment", [
    (["/nonexistent/x.yaml"], "no such file"),
    ([EXAMPLE_A, "--strategy", "bogus"], "unknown strategy 'bogus'"),
    ([EXAMPLE_A, "--platform", "bogus"], "unknown platform 'bogus'"),
    ([EXAMPLE_A, "--html", "/nonexistent-dir/x.html"], "cannot write"),
    ([EXAMPLE_A, "--width", "20"], "at least 60"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    code, out, err = explain(capsys, *argv)
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_deterministic(example_a_text, tmp_path):
    lit = corpus.load(EXAMPLE_A)
    run = run_program(lit.program, registry.strategy("direct"), registry.platform(lit.program.platform))
    story = Story(lit.program, run, title=lit.title, path=lit.path)
    assert text_diagram(story) == example_a_text
    assert html_timeline(story) == html_timeline(Story(lit.program, run, title=lit.title, path=lit.path))
