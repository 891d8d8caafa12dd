"""docs/ as a manual: small, every file linked, every link alive, and the README's layout section
true to the tree. Pure file reads: no network, no imports of the project."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

MAX_BYTES = 5 * 1024 * 1024
MAX_FILES = 80

# [text](target) and ![alt](target); an optional "title" after the target is dropped.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def docs_files() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*") if p.is_file())


def markdown_pages() -> list[Path]:
    return [README] + [p for p in docs_files() if p.suffix == ".md"]


def prose(text: str) -> str:
    """The text without fenced blocks and code spans, where a `[x](y)` is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith(("#", "/"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found: set[str] = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base, n = slug(m.group(1)), 0
        while (base if n == 0 else f"{base}-{n}") in found:
            n += 1
        found.add(base if n == 0 else f"{base}-{n}")
    found |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return found


def resolve(page: Path, target: str) -> tuple[Path, str]:
    path, _, anchor = unquote(target).partition("#")
    return (page.parent / path).resolve() if path else page.resolve(), anchor


# --- size and count ------------------------------------------------------------------------------


def test_docs_is_small():
    files = docs_files()
    size = sum(p.stat().st_size for p in files)
    assert size < MAX_BYTES, f"docs/ holds {size / 2**20:.1f} MiB, the limit is {MAX_BYTES / 2**20:.0f} MiB"
    assert len(files) < MAX_FILES, f"docs/ holds {len(files)} files, the limit is under {MAX_FILES}"


# --- links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(page: Path):
    dead = []
    for target in links(page):
        if not is_relative(target) and not target.startswith("#"):
            continue
        path, anchor = resolve(page, target)
        if not path.is_file():
            dead.append(f"{target} (no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dead.append(f"{target} (no heading #{anchor} in {path.relative_to(ROOT)})")
    assert not dead, f"{page.relative_to(ROOT)}: dead links:\n" + "\n".join(dead)


def test_every_docs_file_is_linked():
    linked = set()
    for page in markdown_pages():
        for target in links(page):
            if is_relative(target):
                linked.add(resolve(page, target)[0])
    orphans = [
        str(p.relative_to(ROOT)) for p in docs_files() if p.resolve() not in linked and p != DOCS / "index.md"
    ]
    assert not orphans, (
        "files in docs/ that no page in docs/ and not README.md links to "
        "(link them from the page that quotes them, or delete them):\n" + "\n".join(orphans)
    )


def test_index_lists_every_page():
    listed = {resolve(DOCS / "index.md", t)[0] for t in links(DOCS / "index.md") if is_relative(t)}
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.resolve() not in listed]
    assert not missing, f"docs/index.md does not list: {missing}"


def test_the_link_checks_can_fail(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "[a](missing.md) `[b](c.md)`\n```\n[d](e.md)\n```\n## A heading: here\n", encoding="utf-8"
    )
    assert links(page) == ["missing.md"]
    assert not resolve(page, links(page)[0])[0].is_file()
    assert anchors(page) == {"a-heading-here"}


# --- the README's layout section -----------------------------------------------------------------


def layout_section() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Layout\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "README.md has no '## Layout' section"
    return m.group(1)


ENTRY = re.compile(r"^( *)(\S+)(?:\s|$)")


def layout_entries(section: str) -> list[str]:
    """Each line of the section's code block names one path as its first word: a top-level folder
    at column 0 (`name/`), or, indented, a file or folder inside the last top-level folder."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", section, re.M | re.S)
    assert blocks, "the layout section has no code block"
    entries, folder = [], None
    for line in "\n".join(blocks).splitlines():
        m = ENTRY.match(line)
        if not m:
            continue
        indent, name = m.groups()
        if not indent:
            assert name.endswith("/"), f"layout: a top-level entry names a folder: {line!r}"
            folder = name
            entries.append(name)
        else:
            assert folder, f"layout: an indented line before any folder: {line!r}"
            entries.append(folder + name)
    return entries


def tracked_top_level_folders() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and out.stdout:
        return {f.split("/", 1)[0] + "/" for f in out.stdout.splitlines() if "/" in f}
    skip = {
        ".git",
        ".venv",
        "__pycache__",
        ".pytest_cache",
        ".hypothesis",
        ".ruff_cache",
        "bundles",
        "results",
    }
    return {
        p.name + "/"
        for p in ROOT.iterdir()
        if p.is_dir() and p.name not in skip and not p.name.endswith(".egg-info")
    }


def modules(package: str) -> set[str]:
    return {f"{package}/{p.name}" for p in (ROOT / package).glob("*.py") if p.name != "__init__.py"}


def test_layout_names_only_paths_that_exist():
    section = layout_section()
    entries = layout_entries(section)
    missing = [e for e in entries if not (ROOT / e).exists()]
    # paths from the repository root named in the descriptions too ("scripts/x.py",
    # "deploy/prometheus/alerts.yml"): words whose first part is a top-level folder
    top = {e for e in entries if e.count("/") == 1 and e.endswith("/")}
    for word in re.findall(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]*)", section):
        word = word.rstrip(".,:;)")
        if word.split("/", 1)[0] + "/" in top and not (ROOT / word).exists():
            missing.append(word)
    assert not missing, f"README layout names paths that do not exist: {sorted(set(missing))}"


def test_layout_lists_every_top_level_folder():
    entries = set(layout_entries(layout_section()))
    missing = sorted(tracked_top_level_folders() - entries)
    assert not missing, f"README layout leaves out top-level folders: {missing}"


@pytest.mark.parametrize("package", ["service", "dihs_model"])
def test_layout_lists_every_module(package: str):
    entries = set(layout_entries(layout_section()))
    missing = sorted(modules(package) - entries)
    assert not missing, f"README layout leaves out modules of {package}/ (add a line each): {missing}"


def test_the_layout_checks_can_fail():
    section = "\n```\nservice/  the app\n  app.py  x\n  gone.py  y\nnot_a_folder/\n```\n"
    entries = layout_entries(section)
    assert entries == ["service/", "service/app.py", "service/gone.py", "not_a_folder/"]
    assert not (ROOT / "service/gone.py").exists()
    assert modules("service") - set(entries), "a module without a line must show up as missing"


def test_layout_path_words_are_checked(monkeypatch):
    fake = "## Layout\n\n```\nscripts/  x, and scripts/gate_diagnostic.py (gone)\n```\n"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: fake if self == README else "")
    with pytest.raises(AssertionError, match="gate_diagnostic"):
        test_layout_names_only_paths_that_exist()
