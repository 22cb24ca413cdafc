"""API keys: random, shown once, stored as a SHA-256 hash; looked up by hash on every API call."""
from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa

from portal.clock import now
from portal.extensions import db
from portal.models import ApiKey, User

PREFIX = "sp_live_"


class ApiKeyError(ValueError):
    pass


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create(user: User, name: str) -> tuple[ApiKey, str]:
    """A new key for `user`: returns the row and the raw key, which is never stored or shown again."""
    name = (name or "").strip()
    if not name:
        raise ApiKeyError("give the key a name, e.g. the product that will use it")
    if len(name) > 80:
        raise ApiKeyError("names are at most 80 characters")
    raw = PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(user_id=user.id, name=name, prefix=raw[: len(PREFIX) + 4], key_hash=_digest(raw), created_at=now())
    db.session.add(key)
    db.session.flush()
    return key, raw


def authenticate(raw: str) -> tuple[ApiKey, User] | None:
    """The active key and its user for a raw key, or None (unknown or revoked)."""
    if not raw or not raw.startswith(PREFIX) or len(raw) > 200:
        return None
    row = db.session.execute(
        sa.select(ApiKey, User).join(User, User.id == ApiKey.user_id)
        .where(ApiKey.key_hash == _digest(raw), ApiKey.revoked_at.is_(None), User.is_active_account.is_(True))
    ).first()
    return None if row is None else (row[0], row[1])


def touch(key: ApiKey) -> None:
    """Note the key's use, at most once a minute (a write per API call would be a hot row)."""
    at = now()
    if key.last_used_at is None or (at - key.last_used_at).total_seconds() >= 60:
        db.session.execute(sa.update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=at))


def list_keys(user_id: int) -> list[ApiKey]:
    return list(db.session.scalars(sa.select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id.desc())))


def owned(user_id: int, key_id: int) -> ApiKey | None:
    return db.session.scalar(sa.select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id))


def revoke(key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = now()
        db.session.flush()
