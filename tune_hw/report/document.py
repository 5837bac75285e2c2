"""The report as a document: blocks (sections, paragraphs, warnings, tables, figures) rendered
to Markdown and to one self-contained HTML page, and the one way each number is written."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_hw.analysis.params import ParamSpec
from tune_hw.analysis.trials import native

MAX_TABLE_ROWS = 40  # rows of any table the report shows (the leaderboard's length too)


@dataclass
class Doc:
    """The report as blocks, rendered to Markdown and to self-contained HTML."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def section(self, anchor: str, title: str) -> None:
        self.blocks.append(("section", (anchor, title)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def warn(self, text: str) -> None:
        self.blocks.append(("warn", text))

    def table(self, df: pd.DataFrame) -> None:
        if len(df):
            self.blocks.append(("table", df.head(MAX_TABLE_ROWS)))

    def figure(self, rel: str, caption: str) -> None:
        self.blocks.append(("figure", (rel, caption)))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "section":
                lines += [f"## {value[1]}", ""]
            elif kind == "para":
                lines += [value, ""]
            elif kind == "warn":
                lines += [f"> **Warning:** {value}", ""]
            elif kind == "table":
                lines += [md_table(value), ""]
            elif kind == "figure":
                lines += [f"![{value[1]}]({value[0]})", ""]
        return "\n".join(lines)

    def html(self, out: Path) -> str:
        toc = "".join(f'<li><a href="#{v[0]}">{html.escape(v[1])}</a></li>'
                      for k, v in self.blocks if k == "section")
        body, open_section = [], False
        for kind, value in self.blocks:
            if kind == "section":
                body.append("</section>" if open_section else "")
                body.append(f'<section id="{value[0]}"><h2>{html.escape(value[1])}</h2>')
                open_section = True
            elif kind == "para":
                body.append(f"<p>{html.escape(value)}</p>")
            elif kind == "warn":
                body.append(f'<p class="warn"><b>Warning:</b> {html.escape(value)}</p>')
            elif kind == "table":
                body.append(html_table(value))
            elif kind == "figure":
                data = base64.b64encode((out / value[0]).read_bytes()).decode()
                body.append(f'<figure><img src="data:image/png;base64,{data}" '
                            f'alt="{html.escape(value[1])}"><figcaption>'
                            f"{html.escape(value[1])}</figcaption></figure>")
        body.append("</section>" if open_section else "")
        return HTML_PAGE.format(title=html.escape(self.title), toc=toc, body="\n".join(body))


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th {{ background: #f2f2f2; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #555; }}
.warn {{ background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; }}
nav li {{ display: inline; margin-right: 1em; }}
</style></head>
<body><h1>{title}</h1><nav><ul>{toc}</ul></nav>
{body}
</body></html>
"""


def cell(value: Any, number_format: str | None = None) -> str:
    """A table cell; numbers in their column's format (one format per column)."""
    value = native(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "n/a"
    if number_format and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, number_format)
    return fmt(value) if isinstance(value, float) else str(value)


def column_format(values: pd.Series) -> str | None:
    """The one format a column of numbers is shown in: whole numbers as such, else 3 decimals,
    or 3 significant digits when some value is small (< 0.01) or large (>= 10,000)."""
    numbers = [float(v) for v in map(native, values)
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not numbers or len(numbers) < sum(1 for v in values if not _blank(v)):
        return None  # no numbers, or text among them
    if all(x == round(x) and abs(x) < 1e15 for x in numbers):
        return ".0f"
    if any(x != 0 and (abs(x) < 0.01 or abs(x) >= 1e4) for x in numbers):
        return ".3g"
    return ".3f"


def _blank(value: Any) -> bool:
    value = native(value)
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers as the text states them: 3 decimals, or 3 significant digits when small/large."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(x)
    x = float(x)
    if 2 <= abs(x) < 1e6 and x == round(x):  # 2000.0 steps, 3.0 epochs; not accuracy 1.0
        return str(int(x))
    if x != 0 and (abs(x) < 0.01 or abs(x) >= 1e4):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def _cells(df: pd.DataFrame) -> list[list[str]]:
    """Every cell of `df` as text, each column in its one number format."""
    formats = [column_format(df[c]) for c in df.columns]
    return [[cell(v, f) for v, f in zip(row, formats, strict=True)]
            for row in df.itertuples(False)]


def md_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(row) + " |" for row in _cells(df)]
    return "\n".join([head, rule, *rows])


def html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
                   + "</tr>" for row in _cells(df))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def range_text(spec: ParamSpec) -> str:
    if spec.categorical:
        return f"{spec.kind} {spec.values}"
    return f"{spec.kind} [{spec.low:.3g}, {spec.high:.3g}]"
