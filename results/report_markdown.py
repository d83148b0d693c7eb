"""The Markdown subset dmlbench writes (importance reports), as HTML for the report."""
from __future__ import annotations

import re
from pathlib import Path

from dmlbench.results.report_page import data_uri, esc

__all__ = ["markdown_to_html"]

_IMG = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _inline(text: str, base: Path | None) -> str:
    out, pos = [], 0
    for m in _IMG.finditer(text):
        out.append(_BOLD.sub(r"<strong>\1</strong>", esc(text[pos:m.start()])))
        path = (base / m.group(2)) if base is not None else None
        if path is not None and path.suffix.lower() == ".png" and path.is_file():
            out.append(f'<img src="{data_uri(path.read_bytes())}" alt="{esc(m.group(1))}">')
        else:
            out.append(f"<em>[figure {esc(m.group(2))} not found]</em>")
        pos = m.end()
    out.append(_BOLD.sub(r"<strong>\1</strong>", esc(text[pos:])))
    return "".join(out)


def markdown_to_html(md: str, base: Path | None = None, *, shift: int = 0) -> str:
    """The Markdown subset dmlbench writes (headings, paragraphs, **bold**, pipe tables, "- "
    lists, images of PNG files under `base`, inlined) as HTML; everything else escaped.
    `shift` lowers heading levels."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
            continue
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            level = min(6, len(m.group(1)) + shift)
            out.append(f"<h{level}>{_inline(m.group(2), base)}</h{level}>")
            i += 1
            continue
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i].rstrip())
                i += 1
            out.append(_md_table(block, base))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:], base)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        para = [line]
        i += 1
        while i < len(lines) and lines[i].strip() and not re.match(r"(#|\||- )", lines[i]):
            para.append(lines[i].rstrip())
            i += 1
        out.append(f"<p>{_inline(' '.join(para), base)}</p>")
    return "\n".join(out)


def _md_cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def _md_table(block: list[str], base: Path | None) -> str:
    head = _md_cells(block[0])
    aligns = ["right" if c.endswith(":") and not c.startswith(":") else "left"
              for c in _md_cells(block[1])] if len(block) > 1 else []
    rows = [_md_cells(line) for line in block[2:]]
    th = "".join(f"<th>{_inline(h, base)}</th>" for h in head)
    body = "".join("<tr>" + "".join(
        f'<td class="{"num" if (aligns[j] if j < len(aligns) else "") == "right" else ""}">'
        f"{_inline(c, base)}</td>" for j, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="plain"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'
