"""API keys: list, create (the raw key is shown once), revoke."""
from __future__ import annotations

from flask import abort, flash, make_response, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import StringField

from portal.blueprints.customer import bp
from portal.extensions import db, htmx
from portal.services import api_keys
from portal.services.audit import audit


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


class ApiKeyForm(FlaskForm):
    # Validated by services.api_keys.create, so the rules live in one place.
    name = StringField("Name", filters=[_strip], render_kw={"maxlength": 80, "placeholder": "e.g. Quiz app (production)"})


class RevokeForm(FlaskForm):
    """Only the CSRF token."""


def _no_store(response):
    # The raw key is in this response: keep it out of every cache and the back-forward history.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/account/api-keys", endpoint="api_keys")
@login_required
def api_keys_page():
    """The customer's API keys and a form to create one."""
    return _page(ApiKeyForm(formdata=None))


def _page(form: ApiKeyForm, *, created=None, raw_key: str | None = None, status: int = 200):
    return render_template(
        "customer/api_keys.html", form=form, keys=api_keys.list_keys(current_user.id), revoke_form=RevokeForm(),
        created=created, raw_key=raw_key,
    ), status


@bp.post("/account/api-keys")
@login_required
def create_api_key():
    """Create a key and show it once (an htmx partial when asked by htmx, else the whole page)."""
    form = ApiKeyForm()
    if form.validate_on_submit():
        user = current_user._get_current_object()
        try:
            key, raw = api_keys.create(user, form.name.data)
        except api_keys.ApiKeyError as error:
            db.session.rollback()
            form.name.errors.append(str(error))
        else:
            audit("api_key.created", key, actor_id=user.id, data={"name": key.name, "prefix": key.prefix})
            fresh = ApiKeyForm(formdata=None)
            if htmx:
                body = render_template("customer/_api_key_created.html", form=fresh, created=key, raw_key=raw,
                                       keys=api_keys.list_keys(user.id), revoke_form=RevokeForm())
                return _no_store(make_response(body, 201))
            return _no_store(make_response(*_page(fresh, created=key, raw_key=raw, status=201)))
    if htmx:
        return render_template("customer/_api_key_form.html", form=form), 422
    return _page(form, status=422)


@bp.post("/account/api-keys/<int:key_id>/revoke")
@login_required
def revoke_api_key(key_id: int):
    """Revoke one of the customer's keys; revoking twice is harmless."""
    key = api_keys.owned(current_user.id, key_id)
    if key is None:
        abort(404)
    if not RevokeForm().validate_on_submit():
        abort(400)
    already = key.revoked_at is not None
    api_keys.revoke(key)
    if not already:
        audit("api_key.revoked", key, actor_id=current_user.id, data={"name": key.name, "prefix": key.prefix})
    flash(f"“{key.name}” ({key.prefix}…) is revoked: requests using it are refused from now on.", "success")
    return redirect(url_for("customer.api_keys"), code=303)
