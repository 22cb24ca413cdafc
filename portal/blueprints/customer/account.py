"""Account settings: the name emails greet, the time zone they show dates in, and usage emails."""
from __future__ import annotations

from zoneinfo import available_timezones

from flask import flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import BooleanField, StringField
from wtforms.validators import Length, Optional, ValidationError

from portal.blueprints.customer import bp
from portal.services import auth as accounts
from portal.services.audit import audit


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class AccountForm(FlaskForm):
    name = StringField("Name", filters=[_strip], validators=[Length(max=120, message="At most 120 characters.")])
    timezone = StringField("Time zone", filters=[_strip], validators=[Optional()],
                           render_kw={"placeholder": "e.g. Europe/Paris", "list": "timezones"})
    usage_emails = BooleanField("Email me at 80 % and 100 % of a quota")

    def validate_timezone(self, field) -> None:
        if field.data and field.data not in available_timezones():
            raise ValidationError("Choose a time zone from the list, such as Europe/Paris or America/New_York.")


@bp.route("/account", methods=["GET", "POST"])
@login_required
def account():
    """The customer's settings."""
    user = current_user._get_current_object()
    form = AccountForm(obj=user)
    if form.validate_on_submit():
        accounts.update_settings(user, name=form.name.data or "", timezone=form.timezone.data or None,
                                 usage_emails=form.usage_emails.data)
        audit("account.updated", user, actor_id=user.id,
              data={"timezone": user.timezone, "usage_emails": user.usage_emails})
        flash("Your settings are saved.", "success")
        return redirect(url_for("customer.account"), 303)
    return render_template("customer/account.html", form=form, zones=sorted(available_timezones())), \
        422 if form.errors else 200
