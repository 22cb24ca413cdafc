"""Rendering an email: subject, text and HTML from its kind's templates, with absolute links
(PORTAL_BASE_URL), amounts in the currency's format and instants in the customer's time zone."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import current_app, render_template, url_for

from portal.services.notifications.kinds import KINDS


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def zone(name: str | None) -> timezone | ZoneInfo:
    """The customer's time zone, UTC when unknown or not a zone."""
    if not name:
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return timezone.utc


def _values(context: dict[str, Any], tz: timezone | ZoneInfo) -> dict[str, Any]:
    """The context as templates use it: ISO instants (keys ending in _at) as datetimes in `tz`."""
    values = dict(context)
    for key, value in context.items():
        if key.endswith("_at") or key.endswith("_end") or key.endswith("_until"):
            if isinstance(value, str):
                values[key] = datetime.fromisoformat(value).astimezone(tz)
    return values


def _link(endpoint: str, **values: Any) -> str:
    return url_for(endpoint, _external=True, **values)


def render_subject(kind: str, context: dict[str, Any], *, tz_name: str | None = None) -> str:
    """The subject line alone (what the log shows while the email waits)."""
    values = _values(context, zone(tz_name))
    return _subject_template(kind).render(**values).strip()


def _subject_template(kind: str):
    """The kind's subject template, compiled once per app (compiling costs more than rendering)."""
    env = current_app.jinja_env
    compiled = env.__dict__.setdefault("portal_subjects", {})
    template = compiled.get(kind)
    if template is None:
        template = compiled[kind] = env.from_string(KINDS[kind].subject)
    return template


def render(kind: str, context: dict[str, Any], *, name: str = "", tz_name: str | None = None) -> Rendered:
    """Subject and both parts of `kind` for `context` (needs an app context; makes its own request
    context so links are absolute to PORTAL_BASE_URL)."""
    values = {**_values(context, zone(tz_name)), "name": name or "there", "link": _link}
    with current_app.test_request_context(base_url=current_app.config["PORTAL_BASE_URL"]):
        subject = render_subject(kind, context, tz_name=tz_name)
        values["subject"] = subject
        text = render_template(f"emails/{kind}.txt", **values).strip() + "\n"
        html = render_template(f"emails/{kind}.html", **values)
    return Rendered(subject, text, html)
