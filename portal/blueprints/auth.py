"""Register, log in, log out, change password."""
from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Email, EqualTo, Length

from portal.extensions import limiter
from portal.services import auth as accounts
from portal.services.audit import audit

bp = Blueprint("auth", __name__)

def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


PASSWORD_RULES = [DataRequired(), Length(min=10, max=128, message="Use between 10 and 128 characters.")]


class RegisterForm(FlaskForm):
    name = StringField("Name", filters=[_strip], validators=[Length(max=120)])
    email = EmailField("Email", filters=[_strip],
                       validators=[DataRequired(), Email(check_deliverability=False), Length(max=254)])
    password = PasswordField("Password", validators=PASSWORD_RULES)
    confirm = PasswordField("Repeat password", validators=[DataRequired(), EqualTo("password", "The passwords differ.")])


class LoginForm(FlaskForm):
    # No format check here: the account lookup decides, and reserved domains (.test) must still log in.
    email = EmailField("Email", filters=[_strip], validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired()])


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired()])
    password = PasswordField("New password", validators=PASSWORD_RULES)
    confirm = PasswordField("Repeat new password", validators=[DataRequired(), EqualTo("password", "The passwords differ.")])


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _start_session(user) -> None:
    # A fresh session on every login: nothing from before the login (fixation) survives.
    session.clear()
    session["sid"] = secrets.token_urlsafe(16)
    login_user(user)


def _safe_next(target: str | None) -> str | None:
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def register():
    """Create an account; it starts on the Free plan."""
    if current_user.is_authenticated:
        return redirect(url_for("customer.home"))
    form = RegisterForm()
    if form.validate_on_submit():
        try:
            user = accounts.register(form.email.data, form.password.data, form.name.data or "")
        except accounts.AuthError as exc:
            form.email.errors.append(str(exc))
        else:
            audit("auth.register", user, actor_id=user.id)
            _start_session(user)
            flash("Welcome! You are on the Free plan.", "success")
            return redirect(url_for("customer.home"))
    return render_template("auth/register.html", form=form), 200 if request.method == "GET" else 422


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def login():
    """Log in with email and password."""
    if current_user.is_authenticated:
        return redirect(url_for("customer.home"))
    form = LoginForm()
    if form.validate_on_submit():
        user = accounts.authenticate(form.email.data, form.password.data)
        if user is None or not user.is_active:
            audit("auth.login_failed", None, data={"email": accounts.normalize_email(form.email.data)})
            form.password.errors.append("Email or password is not correct.")
        else:
            audit("auth.login", user, actor_id=user.id)
            _start_session(user)
            default = url_for("staff.index") if user.is_staff else url_for("customer.home")
            return redirect(_safe_next(request.args.get("next")) or default)
    status = 200 if request.method == "GET" else 422
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
@login_required
def logout():
    """Log out here and end every other session of this account."""
    user = current_user._get_current_object()
    accounts.end_other_sessions(user)
    audit("auth.logout", user, actor_id=user.id)
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password():
    """Change the password; other sessions end, this one continues."""
    form = PasswordForm()
    if form.validate_on_submit():
        user = current_user._get_current_object()
        try:
            accounts.change_password(user, form.current.data, form.password.data)
        except accounts.AuthError as exc:
            form.current.errors.append(str(exc))
        else:
            audit("auth.password_changed", user, actor_id=user.id)
            _start_session(user)
            flash("Password changed. Other sessions have been logged out.", "success")
            return redirect(url_for("customer.home"))
    return render_template("auth/password.html", form=form), 200 if request.method == "GET" else 422
