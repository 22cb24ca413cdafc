"""The audit log: who did what to which object, when, from where (filterable)."""
from __future__ import annotations

from flask import render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import DateField, StringField
from wtforms.validators import Length, Optional, ValidationError

from portal.blueprints.staff import bp
from portal.services import customers_views as views

#: Target types offered as suggestions (any value may be typed).
KNOWN_TARGETS = ("users", "payments", "refunds", "subscriptions", "plans", "features", "api_keys", "invoices",
                 "operation_errors", "wallet_entries")


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class AuditFilterForm(FlaskForm):
    """The audit log's query string."""

    class Meta:
        csrf = False  # a GET form: it reads, never writes

    actor = StringField("Who", filters=[_strip], validators=[Optional(), Length(max=254)],
                        description="A user's email, or “system”.")
    action = StringField("Action starts with", filters=[_strip], validators=[Optional(), Length(max=64)],
                         description="e.g. support. or support.refund")
    target_type = StringField("Target type", filters=[_strip], validators=[Optional(), Length(max=32)])
    target_id = StringField("Target id", filters=[_strip], validators=[Optional(), Length(max=64)])
    start = DateField("From", name="from", validators=[Optional()])
    end = DateField("To", name="to", validators=[Optional()])

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.actor_id: int | None = None

    def validate_actor(self, field) -> None:
        if not field.data or field.data.lower() == "system":
            return
        self.actor_id = views.find_user_id(field.data)
        if self.actor_id is None:
            raise ValidationError("No user has this email.")

    def validate_end(self, field) -> None:
        if field.data and self.start.data and field.data < self.start.data:
            raise ValidationError("The end is before the start.")

    def to_filter(self) -> views.AuditFilter:
        return views.AuditFilter(
            actor_id=self.actor_id, system=(self.actor.data or "").lower() == "system",
            action=self.action.data or None, target_type=self.target_type.data or None,
            target_id=self.target_id.data or None, start=self.start.data, end=self.end.data)

    def as_args(self) -> dict[str, str]:
        """The filter as query-string arguments (for the pager and the links)."""
        args = {"actor": self.actor.data, "action": self.action.data, "target_type": self.target_type.data,
                "target_id": self.target_id.data,
                "from": self.start.data.isoformat() if self.start.data else None,
                "to": self.end.data.isoformat() if self.end.data else None}
        return {key: value for key, value in args.items() if value}


@bp.get("/audit")
def audit():
    """Audit rows, newest first, filtered by who, action, target and days; keyset pages (`before`)."""
    form = AuditFilterForm(request.args)
    before = request.args.get("before", type=int)
    if not form.validate():
        return render_template("staff/audit.html", form=form, page=None, older=None, newest=None,
                               known_targets=KNOWN_TARGETS, args={}), 400
    page = views.audit_page(form.to_filter(), before=before)
    args = form.as_args()
    older = url_for("staff.audit", before=page.next_before, **args) if page.next_before else None
    newest = url_for("staff.audit", **args) if before else None
    return render_template("staff/audit.html", form=form, page=page, older=older, newest=newest,
                           known_targets=KNOWN_TARGETS, args=args)
