"""Rendering the dashboard's pages: Jinja2 templates (autoescaped), its CSP, and small formatters.

The pages load one stylesheet and one script from /dashboard/static and run nothing inline, so
the policy allows 'self' only (the chart is inline SVG with presentation attributes, which a
style-src policy does not govern).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final

import jinja2
from fastapi.responses import HTMLResponse

POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " media-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# same-origin, not the API's no-referrer: under no-referrer a browser sends `Origin: null` with
# a form's POST, and the CSRF check wants to see this origin there.
HEADERS: Final = {
    "Content-Security-Policy": POLICY,
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}
STATIC: Final = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """'12 s ago', '3 min ago', '5 h ago', '2 d ago'; '' for None."""
    if value is None:
        return ""
    seconds = max(0.0, ((now or datetime.now(UTC)) - value).total_seconds())
    return f"{age(seconds)} ago"


def age(seconds: float | None) -> str:
    """A duration in seconds as '850 ms', '12 s', '3 min', '5 h' or '2 d'; an en dash for None."""
    if seconds is None:
        return "\u2013"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}" if seconds >= 10 * size else f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def millis(value: float | None) -> str:
    """Milliseconds for people."""
    return "\u2013" if value is None else age(value / 1000)


def span(start: datetime | None, end: datetime | None) -> str:
    """How long from start to end (to now while running)."""
    if start is None:
        return ""
    return age(((end or datetime.now(UTC)) - start).total_seconds())


def stamp(value: datetime | None) -> str:
    """A UTC time to the second, '' for None."""
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def pretty(value: Any) -> str:
    """JSON, indented, for <pre>."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def percent(value: float | None) -> str:
    """A ratio as a percentage, an en dash for None."""
    return "\u2013" if value is None else f"{value * 100:.1f}%"


def short(value: object) -> str:
    """An id's last 12 characters: a time-ordered (UUIDv7) id's first ones are the same for a whole second."""
    text = str(value)
    return "\u2026" + text[-12:] if len(text) > 12 else text


class Pages:
    """The template environment, built once per app."""

    def __init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("web.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            ago=ago,
            age=age,
            millis=millis,
            span=span,
            stamp=stamp,
            pretty=pretty,
            percent=percent,
            short=short,
        )
        folder = resources.files("web.dashboard").joinpath("static")
        self.static = {name: folder.joinpath(name).read_bytes() for name in STATIC}

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        """The template as an HTML answer with the dashboard's headers."""
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status, headers=HEADERS)
