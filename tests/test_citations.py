"""The repository stands alone: its text cites no notes or trackers outside it, and every repository file,
heading anchor and named section it cites exists.

Scanned: every tracked (and untracked, not ignored) *.py, *.md, *.ipynb, *.toml and *.sh file (notebooks: the
cell sources). Three kinds of problem:
  (a) a citation a reader cannot follow: the team's notes outside the repository (their file names, `../shared`)
      or issue numbers ("issue 5", "issue #5"; another project's issue is cited by its URL);
  (b) a cited repository path (`docs/x.md`, `lowbit_jax/x.py`, ... under a tracked top-level folder, or a relative
      Markdown link) that does not exist; templates holding '<', '*', '{' or '$' are skipped;
  (c) a `file.md#anchor`, `file.md, section "Name"`, `file.md section Name` or `file.md §N` whose heading does not
      exist in that file (GitHub anchors: lower case, punctuation dropped, each space a '-').
This file is not scanned: its samples are bad citations on purpose.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".md", ".ipynb", ".toml", ".sh")
SELF = Path(__file__).resolve()

# (a) notes outside the repository and issue numbers
EXTERNAL = [
    re.compile(r"\bDESIGN\.md\b|\bDESIGN\s*(?:§|section\b|sec\.|\d[\d.]*)"),
    re.compile(r"\bNOTES\.md\b|\bNOTES\s*(?:§|section\b|sec\.|\d[\d.]*)"),
    re.compile(r"\breferences\.md\b", re.IGNORECASE),
    re.compile(r"\.\./shared\b|/work/shared\b"),
    re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE),
]
TEMPLATE_CHARS = set("<>*{}$")
PATH = r"[\w./-]*[\w/]"  # a path tail; a trailing '.' or ',' is punctuation, not part of the path
SECTION_NAME = re.compile(r"""(?:"([^"\n]+)"|“([^”\n]+)”|'([^'\n]+)'|`([^`\n]+)`|([^\n.,;:()"“`]+))""")
NUMBER = re.compile(r"(\d+(?:\.\d+)*)(?![\w])")
MD_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+(.*)$")
HTML_ANCHOR = re.compile(r"""<a\s+(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, characters other than letters, digits, '_', '-' and spaces
    dropped, then every space a '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _untracked_kind(rel: Path) -> bool:
    """Whether a path lies in a hidden, build, cache or output folder (what a checkout's .gitignore leaves out)."""
    skip = {"results", "build", "dist", "__pycache__", "node_modules", "venv"}
    return any(part.startswith(".") or part in skip or part.endswith(".egg-info") for part in rel.parts)


@functools.cache
def tracked_files(root: Path = ROOT) -> tuple[Path, ...]:
    """Tracked and untracked-but-not-ignored files with a scanned suffix (every file under root without git)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # no git (a copy of the tree): skip what git would ignore
        names = [str(p.relative_to(root)) for p in root.rglob("*") if not _untracked_kind(p.relative_to(root))]
    files = {root / n for n in names}
    return tuple(sorted(p for p in files if p.suffix in SUFFIXES and p.is_file()))


def top_folders(root: Path = ROOT) -> tuple[str, ...]:
    """The top-level folders that hold scanned files (a cited path must start with one to be checked)."""
    return tuple(
        sorted({p.relative_to(root).parts[0] for p in tracked_files(root) if len(p.relative_to(root).parts) > 1})
    )


def strip_code_fences(md: str) -> str:
    """Markdown without its fenced code blocks (a '#' line inside a fence is no heading)."""
    return re.sub(r"^\s*(```|~~~).*?^\s*\1[^\n]*$", "", md, flags=re.MULTILINE | re.DOTALL)


def headings(md: str) -> tuple[set[str], set[str]]:
    """(anchors, section names) of a Markdown text.

    anchors: GitHub's, duplicates suffixed -1, -2, ..., plus <a id=...> anchors. Section names (as slugs): each
    heading's title, its part before the first ':', '(', ',', ';' or ' —', and for a numbered heading
    ("4.2 Title") the title without its number and the number itself ("4.2").
    """
    anchors: set[str] = set(HTML_ANCHOR.findall(md))
    names: set[str] = set()
    seen: dict[str, int] = {}
    for m in re.finditer(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", strip_code_fences(md), flags=re.MULTILINE):
        title = m.group(1)
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
        variants = [title]
        num = HEADING_NUMBER.match(title)
        if num:
            names.add(num.group(1))
            variants.append(num.group(2))
        for v in list(variants):
            variants.append(re.split(r"[:(,;]| —| –", v, maxsplit=1)[0])
        names.update(slug(v).strip("-") for v in variants if slug(v).strip("-"))
    return anchors, names


@functools.cache
def file_headings(path: Path) -> tuple[set[str], set[str]]:
    """headings() of a Markdown file, read once."""
    return headings(path.read_text(encoding="utf-8"))


def section_ok(name_match: re.Match, names: set[str]) -> bool:
    """Whether a cited section name (quoted: all of it; unquoted: some leading words of it) names a heading."""
    quoted = next((g for g in name_match.groups()[:4] if g), None)
    if quoted is not None:
        return slug(quoted).strip("-") in names
    words = name_match.group(5).split()[:8]
    return any(slug(" ".join(words[:k])) in names for k in range(1, len(words) + 1))


def external_citations(text: str) -> list[tuple[int, str]]:
    """(a): (offset, text) of every citation of notes outside the repository or of an issue number."""
    return sorted((m.start(), m.group(0)) for pat in EXTERNAL for m in pat.finditer(text))


def cited_paths(text: str, root: Path, folders: tuple[str, ...]) -> list[tuple[str, Path, str | None, int, int]]:
    """(as written, path, anchor or None, start, end) of every repository path the text names (not templates)."""
    if not folders:
        return []
    alt = "|".join(re.escape(f) for f in folders)
    pattern = re.compile(rf"(?<![\w./-])((?:{alt})/{PATH}|README\.md)(#[\w-]+)?")
    refs = []
    for m in pattern.finditer(text):
        if TEMPLATE_CHARS.isdisjoint(text[m.start() : m.end() + 1]):
            refs.append((m.group(0), root / m.group(1), (m.group(2) or "")[1:] or None, m.start(), m.end()))
    return refs


def markdown_links(text: str, source: Path) -> list[tuple[str, Path, str | None, int, int]]:
    """(as written, path, anchor or None, start, -1) of every relative Markdown link; '#x' alone is `source`'s."""
    refs = []
    for m in MD_LINK.finditer(text):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or not TEMPLATE_CHARS.isdisjoint(target):
            continue
        path, _, anchor = target.partition("#")
        refs.append((target, source.parent / path if path else source, anchor or None, m.start(1), -1))
    return refs


def section_problem(text: str, end: int, names: set[str]) -> str | None:
    """The cited section after a path ending at `end` (', section "Name"', ' section Name', ' §4.2'), if it names
    no heading; None when it does or when no section is cited."""
    sec = re.match(r",?\s*(?:section\b|§)\s*", text[end:])
    if not sec:
        return None
    at = end + sec.end()
    num = NUMBER.match(text, at)
    if num:
        ok = num.group(1) in names
    else:
        name = SECTION_NAME.match(text, at)
        ok = name is not None and section_ok(name, names)
    return None if ok else text[end : at + 60].split("\n")[0]


def check_text(text: str, source: Path, root: Path, folders: tuple[str, ...], markdown: bool) -> list[str]:
    """Problems of one text of file `source` (all of it, or a notebook cell): (a), (b) and (c) of the module."""
    problems = [(at, f"cites notes outside the repository or an issue: {c!r}") for at, c in external_citations(text)]
    refs = cited_paths(text, root, folders) + (markdown_links(text, source) if markdown else [])
    for written, path, anchor, at, end in refs:
        if not path.exists():
            problems.append((at, f"cites a repository path that does not exist: {written!r}"))
            continue
        if path.suffix != ".md" or not path.is_file():
            continue
        anchors, names = file_headings(path.resolve())
        if anchor is not None and anchor not in anchors:
            problems.append((at, f"cites an anchor that is no heading of {path.name}: {written!r}"))
        bad = section_problem(text, end, names) if end >= 0 else None
        if bad is not None:
            problems.append((at, f"cites a section that is no heading of {path.name}: {written + bad!r}"))
    return [f"line {text.count(chr(10), 0, at) + 1}: {msg}" for at, msg in sorted(problems)]


def text_units(path: Path) -> list[tuple[str, str, bool]]:
    """(label, text, is Markdown) to scan: the file, or a notebook's cells."""
    if path.suffix != ".ipynb":
        return [("", path.read_text(encoding="utf-8"), path.suffix == ".md")]
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [
        (
            f" cell {i}",
            "".join(c["source"]) if isinstance(c["source"], list) else c["source"],
            c["cell_type"] == "markdown",
        )
        for i, c in enumerate(cells)
    ]


def scan(root: Path = ROOT, exclude: tuple[Path, ...] = (SELF,)) -> list[str]:
    """Every problem in the repository's scanned files, as 'path[ cell i] line n: problem' lines."""
    folders = top_folders(root)
    problems = []
    for path in tracked_files(root):
        if path.resolve() in exclude:
            continue
        rel = path.relative_to(root)
        for label, text, markdown in text_units(path):
            for p in check_text(text, path, root, folders, markdown):
                problems.append(f"{rel}{label} {p}")
    return problems


def test_repository_cites_nothing_outside_it_and_nothing_missing():
    problems = scan()
    assert not problems, f"{len(problems)} bad citations:\n" + "\n".join(problems)


# --- the checker itself ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Edge cases", "edge-cases"),
        ("Zero-point INT (affine)", "zero-point-int-affine"),
        ("E4M3 with an FP32 tensor scale: NVFP4's two levels", "e4m3-with-an-fp32-tensor-scale-nvfp4s-two-levels"),
        ("Element grids (`lowbit_jax.elements`)", "element-grids-lowbit_jaxelements"),
        (
            "4.2 For MX formats κ is the wrong variable: ρ decides",
            "42-for-mx-formats-κ-is-the-wrong-variable-ρ-decides",
        ),
        ("Tile sweep (`x --preset gpu`, GB/s)", "tile-sweep-x---preset-gpu-gbs"),
    ],
)
def test_slug_follows_github(heading, anchor):
    assert slug(heading) == anchor


@pytest.mark.parametrize(
    "line",
    [
        "# --- exact float32 helpers (XLA facts of DESIGN.md section 4) ---",
        "subnormal results may flush on XLA:CPU (DESIGN 4)",
        '"""NOTES 11 (independent analysis): with log2 in BF16 the ceil can fail."""',
        "closed form (paper App. B.2 Eq. 18, NOTES 4)",
        "see NOTES §7 and paper/NOTES.md",
        "the exact floor is 8 (references.md a.4)",
        '"""Bad input raises a clear error (issue 2, item 4)."""',
        "Issue 5's GPU goal: Pallas >= 80 % of copy",
        "tracked in issue #12",
        "the notes in ../shared/ say so",
    ],
)
def test_external_citations_are_found(line):
    assert external_citations(line)


@pytest.mark.parametrize(
    "line",
    [
        "paper Eq. 9 and Table 11 (arXiv 2510.25602, §4.1)",
        "the design of the notes: see docs/theory.md",
        "TransformerEngine PR #3281, github.com/openxla/xla/issues/37181",
        "notes = 3  # NOTE: 4 values",
    ],
)
def test_ordinary_text_is_not_an_external_citation(line):
    assert not external_citations(line)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text(
        "# Title\n\n## Edge cases\n\n## E4M3 scales: two levels\n\n### 4.2 For MX formats\n\n## Edge cases\n\n"
        "```bash\n# not a heading\n```\n[ok](#edge-cases) [bad](#not-a-heading) [img](y.png) [up](../README.md)\n"
    )
    (tmp_path / "docs" / "y.png").write_bytes(b"")
    (tmp_path / "README.md").write_text("# R\n\n## Layout\n")
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "theory.py").write_text("")
    return tmp_path


FOLDERS = ("analysis", "docs")


@pytest.mark.parametrize(
    "text",
    [
        "see docs/x.md, analysis/theory.py and the docs/ folder.",
        "docs/x.md#edge-cases, docs/x.md#edge-cases-1 and docs/x.md#42-for-mx-formats",
        'docs/x.md, section "Edge cases"; docs/x.md, section "E4M3 scales"; docs/x.md section Edge cases (NaN)',
        "docs/x.md section 4.2, docs/x.md §4.2, README.md, section Layout: imports flow one way",
        "results/crossover/crossover.json, docs/<name>.md, analysis/*.py, lowbit_jax/missing.py (no such folder)",
    ],
)
def test_good_citations_pass(tree, text):
    assert check_text(text, tree / "analysis" / "a.py", tree, FOLDERS, markdown=False) == []


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("see docs/missing.md.", "does not exist"),
        ("analysis/theroy.py computes it", "does not exist"),
        ("docs/x.md#edge-case", "anchor"),
        ("docs/x.md#not-a-heading", "anchor"),
        ('docs/x.md, section "Edge"', "section"),
        ("docs/x.md section Corner cases", "section"),
        ("docs/x.md §5", "section"),
        ("README.md, section Use", "section"),
    ],
)
def test_bad_citations_fail(tree, text, kind):
    problems = check_text(text, tree / "analysis" / "a.py", tree, FOLDERS, markdown=False)
    assert len(problems) == 1 and kind in problems[0], problems


def test_markdown_links_resolve_relative_to_the_file(tree):
    md = (tree / "docs" / "x.md").read_text()
    problems = check_text(md, tree / "docs" / "x.md", tree, FOLDERS, markdown=True)
    assert len(problems) == 1 and "#not-a-heading" in problems[0], problems


def test_old_test_citations_are_reported(tree):
    """Lines as the test files had them before they cited the paper and docs/ instead."""
    old = tree / "analysis" / "old_test.py"
    old.write_text(
        '"""Bad input raises a clear error, never a silently wrong array (issue 2, item 4)."""\n'
        "# Paper Table 1 (paper/NOTES.md section 1): format -> (element, block, ...)\n"
        "    np.testing.assert_array_equal(e_ceil != e_floor, mant > 1.75)  # NOTES 2.1: m > m_max\n"
    )
    problems = [p for p in scan(tree, exclude=()) if p.startswith("analysis/old_test.py ")]
    assert len(problems) == 3, problems
