"""The documentation's links and the README's short settings table (issue 23).

README.md is what a user reads first; the rest lives in docs/ and is reached
by relative links. Every relative link and image in README.md and docs/*.md
must name a file that exists and, with `#anchor`, a heading of that file
(GitHub's slugs); every page of docs/ must be linked from the README; and
the README's "settings most people set" must show the defaults the full
configuration table (docs/configuration.md, itself checked against the code
by config.rs's `readme_configuration_table_matches_the_settings`) shows.
Pure text checks: no binary, no emulator."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]

# Fenced blocks, indented ones (in list items) too; code spans within a paragraph.
FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`(?:[^`\n]|\n(?![ \t]*\n))+`")
# [text](target) and ![alt](target), an optional "title"; text may span lines.
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose(text: str) -> str:
    """The text with code blocks and code spans blanked (links in code are not links)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger): the rendered text, lower
    case, without punctuation (letters, digits, `_`, `-` and spaces stay),
    spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor in a page, repeated ones numbered as GitHub does (-1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(page):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def prose_lines(page: Path) -> list[str]:
    # Headings keep their code spans (they are part of the slug): blank fences only.
    text = page.read_text(encoding="utf-8")
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text).splitlines()


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a page that is not to the web."""
    text = prose(page.read_text(encoding="utf-8"))
    out = []
    for m in LINK.finditer(text):
        target = m.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        out.append((text.count("\n", 0, m.start()) + 1, target))
    return out


def broken_links(page: Path) -> list[str]:
    problems = []
    for line, target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path)).resolve() if path else page
        where = f"{page.relative_to(ROOT)}:{line}: ({target})"
        if not dest.exists():
            problems.append(f"{where}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor:
            if dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif unquote(anchor) not in anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor} in "
                                f"{dest.relative_to(ROOT)} (anchors: {', '.join(sorted(anchors(dest)))})")
    return problems


def test_slugs_are_githubs():
    assert slug("Quick start (two commands)") == "quick-start-two-commands"
    assert slug("`json` (default)") == "json-default"
    assert slug("Enrichment (`KINESIS_TELEMETRY_ENRICH=true`, any format)") == \
        "enrichment-kinesis_telemetry_enrichtrue-any-format"
    assert slug("The extension's own records") == "the-extensions-own-records"
    assert slug("What changed — and why") == "what-changed--and-why"


def test_every_link_is_seen():
    """What looks like a link outside code is one the checks below read (a
    link the pattern missed would go unchecked)."""
    for page in PAGES:
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for span in CODE_SPAN.findall(text):
            assert "](" not in span, f"{page.relative_to(ROOT)}: a code span holds a link " \
                f"(an unbalanced backtick, or a fence the pattern misses?): {span[:300]}"
        rest = LINK.sub("", prose(page.read_text(encoding="utf-8")))
        assert "](" not in rest, f"{page.relative_to(ROOT)}: a link the pattern does not read: " \
            + rest[max(0, rest.index("](") - 60):rest.index("](") + 40]


def test_every_relative_link_and_anchor_resolves():
    assert (ROOT / "docs/configuration.md") in DOCS, "docs/ is missing"
    checked = sum(len(links(p)) for p in PAGES)
    problems = [p for page in PAGES for p in broken_links(page)]
    assert not problems, "broken links in the documentation:\n" + "\n".join(problems)
    assert checked >= 30, f"only {checked} links found: is the link pattern still right?"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(ROOT / "README.md") if t.partition("#")[0]}
    orphans = [str(p.relative_to(ROOT)) for p in DOCS if p.resolve() not in linked]
    assert not orphans, f"docs pages no link in README.md leads to: {orphans}"


def table(page: Path, header: str) -> dict[str, list[str]]:
    """The rows of the table under `header` in a page: first cell (unquoted) -> the other cells."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = lines.index(header) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_readmes_settings_show_the_reference_defaults():
    short = table(ROOT / "README.md", "| Variable | Default | What it does |")
    full = table(ROOT / "docs/configuration.md", "| Variable | Default | Range | Meaning |")
    assert len(short) >= 8, short
    problems = [f"{var}: not in docs/configuration.md" for var in short if var not in full]
    problems += [f"{var}: README default {cells[0]!r}, docs/configuration.md {full[var][0]!r}"
                 for var, cells in short.items() if var in full and cells[0] != full[var][0]]
    assert not problems, "\n".join(problems)
