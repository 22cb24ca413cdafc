"""Accounts: Argon2id password hashing, registration (on the Free plan), sessions that can be ended."""
from __future__ import annotations

import functools

import sqlalchemy as sa
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask import current_app
from flask_login import LoginManager

from portal.clock import now
from portal.extensions import db
from portal.models import Role, User
from portal.models.users import new_session_token
from portal.services import subscriptions, wallet

# A valid hash to verify against when the email is unknown, so timing does not reveal accounts.
_DUMMY_PASSWORD = "not-a-real-password"


class AuthError(Exception):
    """Registration or authentication failed; the message is fit to show."""


def _hasher() -> PasswordHasher:
    cfg = current_app.config
    return _hasher_for(cfg["ARGON2_TIME_COST"], cfg["ARGON2_MEMORY_COST"])


@functools.lru_cache(maxsize=4)
def _hasher_for(time_cost: int, memory_cost: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, type=Type.ID)


@functools.lru_cache(maxsize=4)
def _dummy_hash(time_cost: int, memory_cost: int) -> str:
    return _hasher_for(time_cost, memory_cost).hash(_DUMMY_PASSWORD)


def hash_password(password: str) -> str:
    """Argon2id hash of a password."""
    return _hasher().hash(password)


def normalize_email(email: str) -> str:
    return email.strip().lower()


def init_login_manager(manager: LoginManager) -> None:
    manager.login_view = "auth.login"
    manager.login_message = "Please log in to continue."
    manager.login_message_category = "info"
    manager.session_protection = "strong"
    manager.user_loader(load_user)
    manager.unauthorized_handler(_unauthorized)


def _unauthorized():
    """Browsers go to the login page; an htmx request (a polling meter, say) is told to send them there."""
    from flask import flash, redirect, request, url_for

    target = url_for("auth.login", next=request.full_path if request.method == "GET" else None)
    if request.headers.get("HX-Request"):
        return "", 401, {"HX-Redirect": target}
    flash("Please log in to continue.", "info")
    return redirect(target)


def load_user(session_id: str) -> User | None:
    """Flask-Login loader: the session holds "id:token"; a rotated token ends the session."""
    user_id, _, token = session_id.partition(":")
    if not user_id.isdigit() or not token:
        return None
    user = db.session.get(User, int(user_id))
    if user is None or user.session_token != token:
        return None
    return user


def register(email: str, password: str, name: str = "", *, role: Role = Role.CUSTOMER) -> User:
    """Create an account with a wallet, on the default (Free) plan."""
    email = normalize_email(email)
    if db.session.scalar(sa.select(User.id).where(User.email == email)) is not None:
        raise AuthError("an account with this email already exists")
    user = User(email=email, name=name.strip(), password_hash=hash_password(password), role=role,
                currency=current_app.config["DEFAULT_CURRENCY"])
    db.session.add(user)
    db.session.flush()
    wallet.get_wallet(user.id, user.currency)
    if role is Role.CUSTOMER:
        subscriptions.start_subscription(user, subscriptions.default_plan(), reason="sign-up", actor_id=user.id)
    return user


def authenticate(email: str, password: str) -> User | None:
    """The user whose email and password match, or None; rehashes when the cost settings changed."""
    user = db.session.scalar(sa.select(User).where(User.email == normalize_email(email)))
    hasher = _hasher()
    if user is None:
        try:
            cfg = current_app.config
            hasher.verify(_dummy_hash(cfg["ARGON2_TIME_COST"], cfg["ARGON2_MEMORY_COST"]), password)
        except VerificationError:
            pass
        return None
    try:
        hasher.verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hasher.hash(password)
    user.last_login_at = now()
    return user


def verify_password(user: User, password: str) -> bool:
    try:
        return _hasher().verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def change_password(user: User, current: str, new: str) -> None:
    """Set a new password and end every other session of the user."""
    if not verify_password(user, current):
        raise AuthError("the current password is not correct")
    user.password_hash = hash_password(new)
    end_other_sessions(user)


def end_other_sessions(user: User) -> None:
    """Rotate the session token: every session holding the old one is logged out."""
    user.session_token = new_session_token()
    db.session.flush()


def update_settings(user: User, *, name: str, timezone: str | None, usage_emails: bool) -> None:
    """The customer's own settings (validated by the form: the time zone is an IANA name or None)."""
    user.name = name[:120]
    user.timezone = timezone
    user.usage_emails = usage_emails
    db.session.flush()
