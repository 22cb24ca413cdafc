"""The email log (what was sent, to whom, how many tries, the last error) and previews of every kind."""
from __future__ import annotations

from flask import abort, render_template, request, url_for

from portal.blueprints.staff import bp
from portal.models import EmailStatus
from portal.services.notifications import KINDS, views
from portal.services.notifications.render import render


@bp.get("/emails")
def emails():
    """The email log, newest first, filtered by status and kind."""
    status = request.args.get("status") or None
    kind = request.args.get("kind") or None
    if status is not None and status not in {s.value for s in EmailStatus}:
        abort(400, "Unknown status.")
    if kind is not None and kind not in KINDS:
        abort(400, "Unknown kind.")
    before = request.args.get("before", type=int)
    page = views.log_page(status=status, kind=kind, before=before)
    older = url_for("staff.emails", status=status, kind=kind, before=page.next_before) if page.next_before else None
    return render_template("staff/emails.html", page=page, status=status, kind=kind, kinds=sorted(KINDS),
                           statuses=[s.value for s in EmailStatus], older=older)


@bp.get("/emails/previews/<kind>")
def email_preview(kind: str):
    """One kind rendered with its sample data: subject, text and HTML side by side."""
    if kind not in KINDS:
        abort(404)
    rendered = render(kind, KINDS[kind].sample, name="Alice Demo")
    return render_template("staff/email_preview.html", kind=KINDS[kind], rendered=rendered, kinds=sorted(KINDS))
