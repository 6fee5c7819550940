"""docs/results_page.py's placement of a study's section (its content is tested on a real study in
tests/test_workflow.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_page", ROOT / "docs" / "results_page.py")
results_page = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_page)

INTRO = "# Measured results\n\nWhat this page holds.\n"
DEMO = "<!-- results:demo -->\n## The demo\n\nold numbers\n<!-- /results:demo -->"


def _section(name: str, body: str) -> str:
    return f"<!-- results:{name} -->\n## {name}\n\n{body}\n<!-- /results:{name} -->"


def test_a_new_section_goes_before_the_first_section_never_inside_a_generated_one(tmp_path):
    page = tmp_path / "results.md"
    page.write_text(f"{INTRO}\n{DEMO}\n\n## A benchmark\n\ntext\n")
    results_page.write(page, "validation", _section("validation", "new numbers"))
    text = page.read_text()
    assert text.index("<!-- results:validation -->") < text.index("<!-- /results:validation -->") \
        < text.index("<!-- results:demo -->") < text.index("<!-- /results:demo -->") < text.index("## A benchmark")
    assert text.startswith(INTRO)
    # a rerun replaces the section in place, and leaves the others as they were
    results_page.write(page, "validation", _section("validation", "newer numbers"))
    again = page.read_text()
    assert "newer numbers" in again and "new numbers\n" not in again and again.count("results:validation -->") == 2
    assert DEMO in again


def test_a_page_without_sections_gets_the_section_at_its_end(tmp_path):
    page = tmp_path / "results.md"
    page.write_text(INTRO)
    results_page.write(page, "demo", _section("demo", "numbers"))
    assert page.read_text() == f"{INTRO.rstrip()}\n\n{_section('demo', 'numbers')}\n"


def test_jobs_of_a_study_made_in_several_invocations_are_summed(tmp_path):
    """The job count reads every finished invocation's log (an unfinished one adds none), not only the last."""
    logs = tmp_path / ".snakemake" / "log"
    logs.mkdir(parents=True)
    (tmp_path / "results" / "benchmarks").mkdir(parents=True)
    for name, text in (("2026-12-06T0100.snakemake.log", "10 of 271 steps (4%) done\n271 of 271 steps (100%) done\n"),
                       ("2026-12-06T0200.snakemake.log", "140 of 140 steps (100%) done\n"),
                       ("2026-12-06T0300.snakemake.log", "3 of 9 steps (33%) done\n")):
        (logs / name).write_text(text)
    assert results_page.run_facts(tmp_path / "results") == ("411 jobs in 2 invocations", 0.0)
    (logs / "2026-12-06T0200.snakemake.log").unlink()
    assert results_page.run_facts(tmp_path / "results") == ("271 jobs", 0.0)
