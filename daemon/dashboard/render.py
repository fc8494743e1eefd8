"""Server-side HTML: one jinja2 environment (autoescaped), the filters pages share, and the
:class:`View` every page handler returns.

A page is named parts of HTML (a table, a timeline) and named chart data (JSON for uPlot). The
full page renders every part inside ``base.html``; the live stream (``spotd.dashboard.live``)
renders the same view again and sends only the parts and charts that changed, so what a page
shows on load and what it shows a minute later come from one function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["PREFIX", "View", "environment", "render_part"]

PREFIX = "/dashboard"  # where the composition root mounts the dashboard
TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True, slots=True)
class View:
    """What one page shows: its title, HTML parts by name, chart data by name."""

    title: str
    template: str  # the page's template (it places the parts)
    parts: dict[str, str] = field(default_factory=dict)
    charts: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)  # the rest the page template needs


def dur(sec: float | None) -> str:
    """A duration as people read it: 0.4s, 42s, 3m 5s, 2h 7m."""
    if sec is None:
        return "-"
    if sec < 10:
        return f"{max(0.0, sec):.1f}s".replace(".0s", "s")
    s = int(sec)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def money(x: float | None) -> str:
    if x is None:
        return "-"
    if 0 < abs(x) < 0.0001:
        return "<$0.0001"
    if abs(x) < 0.01:
        return f"${x:.4f}"
    return f"${x:,.2f}"


def clock(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ts))


def stamp(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["dur"] = dur
    env.filters["money"] = money
    env.filters["clock"] = clock
    env.filters["stamp"] = stamp
    env.globals["prefix"] = PREFIX
    return env


def render_part(env: jinja2.Environment, name: str, **context: Any) -> str:
    """Render ``templates/parts/<name>.html``."""
    return env.get_template(f"parts/{name}.html").render(**context)
