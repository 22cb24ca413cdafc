"""API keys: random, shown once, stored as a SHA-256 hash; looked up by hash on every API call."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value

from portal.clock import now
from portal.extensions import db
from portal.models import ApiKey, User
from portal.services.statements import connection, param
from portal.services.usage import sql as usage_sql

PREFIX = "sp_live_"

_keys = ApiKey.__table__
_users = User.__table__

#: The active key (not revoked, owner's account active) for a key hash: (id, user_id, last_used_at).
API_KEY_BY_HASH = (
    sa.select(_keys.c.id, _keys.c.user_id, _keys.c.last_used_at)
    .select_from(_keys.join(_users, _users.c.id == _keys.c.user_id))
    .where(
        _keys.c.key_hash == param("p_hash", _keys.c.key_hash),
        _keys.c.revoked_at.is_(None),
        _users.c.is_active_account.is_(True),
    )
)

TOUCH_API_KEY = (
    sa.update(_keys)
    .where(_keys.c.id == param("p_key", _keys.c.id))
    .values(last_used_at=param("p_at", _keys.c.last_used_at))
)


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


@dataclass(frozen=True)
class AuthenticatedKey:
    """The few columns of an active key the API needs: its id and when it was last used."""

    id: int
    user_id: int
    last_used_at: datetime | None


@dataclass(frozen=True)
class ApiUser:
    """The key's owner as the API sees it (g.api_user): only the id is used."""

    id: int


def _well_formed(raw: str) -> bool:
    """Could `raw` be one of our keys at all? (Anything else is refused without a query.)"""
    return bool(raw) and raw.startswith(PREFIX) and len(raw) <= 200


def authenticate(raw: str) -> tuple[AuthenticatedKey, ApiUser] | None:
    """The active key and its user for a raw key, or None (unknown, revoked, or the account is disabled).

    One prebuilt Core SELECT of the needed columns, run on every API call and never cached, so a
    revoked key or a disabled account is refused on the very next request.
    """
    if not _well_formed(raw):
        return None
    row = connection().execute(API_KEY_BY_HASH, {"p_hash": _digest(raw)}).first()
    if row is None:
        return None
    return AuthenticatedKey(row.id, row.user_id, row.last_used_at), ApiUser(row.user_id)


def authenticate_with_entitlement(
    raw: str, feature_code: str, *, autocommit: bool = False
) -> tuple[AuthenticatedKey, ApiUser, sa.Row] | None:
    """`authenticate` and the entitlement to `feature_code` in one round trip (the usage API's hot path).

    Returns the key, its user and the row of usage_sql.KEY_AND_ENTITLEMENT for
    usage.entitlement_from_row, or None like `authenticate`. `autocommit`: see statements.connection.
    """
    if not _well_formed(raw):
        return None
    row = connection(autocommit=autocommit).execute(
        usage_sql.KEY_AND_ENTITLEMENT, {"p_hash": _digest(raw), "p_code": feature_code}
    ).first()
    if row is None:
        return None
    return AuthenticatedKey(row.key_id, row.key_user_id, row.last_used_at), ApiUser(row.key_user_id), row


def touch(key: ApiKey | AuthenticatedKey) -> None:
    """Note the key's use, at most once a minute (a write per API call would be a hot row)."""
    at = now()
    if key.last_used_at is None or (at - key.last_used_at).total_seconds() >= 60:
        connection().execute(TOUCH_API_KEY, {"p_key": key.id, "p_at": at})
        if isinstance(key, ApiKey):  # keep a loaded ORM row in step, as an ORM update would
            set_committed_value(key, "last_used_at", at)


def list_keys(user_id: int) -> list[ApiKey]:
    return list(db.session.scalars(sa.select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id.desc())))


def owned(user_id: int, key_id: int) -> ApiKey | None:
    return db.session.scalar(sa.select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id))


def revoke(key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = now()
        db.session.flush()
