"""The documentation: a short README with no commit ids, and links that resolve inside the repository.

The README is the newcomer's guide (at most 12,000 characters); the reference lives in
config/README.md and docs/, reached by relative links. Measured runs, with their commits, live in
docs/results.md, never in the README.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_CHARS = 12_000

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# inline links and images [text](target "title"), and reference definitions [id]: target
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']", re.I)
HEX_TOKEN = re.compile(r"\b[0-9a-f]{7,40}\b")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
LOCAL_HOSTS = re.compile(r"^https?://(localhost|127\.|0\.0\.0\.0|\[::1\])", re.I)


def prose(text: str) -> str:
    """Markdown without its fenced code blocks and code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return [m for m in INLINE_LINK.findall(body) + REFERENCE_DEF.findall(body) if m]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = path.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    found = set(EXPLICIT_ANCHOR.findall(text))
    for _, title in HEADING.findall(FENCE.sub("", text)):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


@cache
def repository_files() -> tuple[Path, ...]:
    """Tracked files and untracked ones git does not ignore (what a clone or a commit would hold)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return tuple(p for p in ROOT.rglob("*") if p.is_file() and not {".git", ".venv", "results"} & set(
            p.relative_to(ROOT).parts))
    return tuple(ROOT / name for name in out.split("\0") if name and (ROOT / name).is_file())


def markdown_files() -> list[Path]:
    return sorted(p for p in repository_files() if p.suffix.lower() == ".md")


def guide_pages() -> list[Path]:
    """The pages whose relative links must all resolve: the README, config/README.md and docs/."""
    return [README, ROOT / "config/README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_short():
    size = len(README.read_text(encoding="utf-8"))
    assert size <= MAX_README_CHARS, (
        f"README.md has {size} characters, more than {MAX_README_CHARS}: move reference material to "
        "config/README.md or docs/ and link it")


def test_the_readme_names_no_commit():
    text = README.read_text(encoding="utf-8")
    tokens = sorted(set(HEX_TOKEN.findall(text)))
    # a hash-like token (digits and letters) is refused even where this clone lacks the commit (shallow)
    hashlike = [t for t in tokens if re.search(r"[a-f]", t) and re.search(r"[0-9]", t)]
    commits = []
    for token in tokens:
        proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{token}^{{commit}}"], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode == 0:
            commits.append(token)
    assert not commits and not hashlike, (
        f"README.md names commits {commits or hashlike}: measured runs and their commits belong in docs/results.md")


def test_the_guide_pages_exist():
    for page in guide_pages()[:2]:
        assert page.is_file(), page
    assert len(guide_pages()) > 2, "docs/ holds no page"


@pytest.mark.parametrize("page", guide_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    if not page.is_file():
        pytest.skip(f"{page.relative_to(ROOT)} is missing (test_the_guide_pages_exist)")
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # a URL: checked by test_no_link_leaves_the_repository
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
        elif fragment and dest.suffix.lower() == ".md" and unquote(fragment).lower() not in anchors(dest):
            broken.append(f"{target} (no heading with anchor #{fragment} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_no_link_leaves_the_repository():
    """Markdown links point inside the repository or to public http(s) URLs; no file names the shared
    folder beside the checkout or the checkout's own absolute location."""
    outside = []
    for page in markdown_files():
        for target in links(page.read_text(encoding="utf-8", errors="replace")):
            where = f"{page.relative_to(ROOT)}: {target}"
            if SCHEME.match(target) or target.startswith("//"):
                if not re.match(r"^(https?|mailto):", target, re.I) or LOCAL_HOSTS.match(target):
                    outside.append(where)
                continue
            path_part = unquote(target.partition("#")[0])
            if path_part.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", path_part):
                outside.append(where)
            elif path_part and not (page.parent / path_part).resolve().is_relative_to(ROOT):
                outside.append(where)
    # the checkout's own path and the shared folder beside it (not the parent itself: a clone in /tmp
    # must not forbid every /tmp/ path a script uses)
    forbidden = ["../" + "shared/", str(ROOT) + "/", str(ROOT.parent / "shared") + "/"]
    this = Path(__file__).resolve()
    for path in repository_files():
        if path.resolve() == this or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        outside += [f"{path.relative_to(ROOT)}: names {s!r}" for s in forbidden if s in text]
    assert not outside, f"links or paths outside the repository: {outside}"


def test_slugs_follow_github():
    assert slug("Leave one cohort out (`study.evaluation`)") == "leave-one-cohort-out-studyevaluation"
    assert slug("Tracking server (MLflow)") == "tracking-server-mlflow"
    assert slug("Results tables and summary.md") == "results-tables-and-summarymd"
    assert slug("Fine-tuning (`sslad finetune`)") == "fine-tuning-sslad-finetune"
