"""API idempotency: the first answer to a key is stored and replayed byte for byte.

The record is inserted *before* the work, in the same transaction, by INSERT ... ON CONFLICT
DO NOTHING. A concurrent request with the same key blocks on the unique index until the first
commits, then finds the stored answer (or, if the first rolled back, inserts and proceeds
itself). So one key does the work once. No savepoint is needed: the insert cannot fail on the
key, and the claim is one round trip when the key is new (the usual case).

These run on every keyed API call, so they are prebuilt Core statements (see services.statements).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from portal.clock import now
from portal.models import IdempotencyRecord
from portal.services.statements import connection, dialect_insert, param

#: Keys are kept at least this long (the purge job deletes them afterwards).
RETENTION = timedelta(hours=48)
_IN_PROGRESS = 0

_records = IdempotencyRecord.__table__
_ID = param("p_id", _records.c.id)
_FIND = sa.select(_records.c.request_hash, _records.c.response_status, _records.c.response_body).where(
    _records.c.user_id == param("p_user", _records.c.user_id),
    _records.c.key == param("p_key", _records.c.key),
)
_STORE = sa.update(_records).where(_records.c.id == _ID).values(
    response_status=param("p_status", _records.c.response_status),
    response_body=param("p_body", _records.c.response_body),
)
_RELEASE = sa.delete(_records).where(_records.c.id == _ID)
_insert_by_dialect: dict[str, sa.Insert] = {}


def _claim_statement(dialect: str) -> sa.Insert:
    """INSERT the in-progress record unless the key exists; returns its id, or no row."""
    stmt = _insert_by_dialect.get(dialect)
    if stmt is None:
        stmt = _insert_by_dialect[dialect] = (
            dialect_insert(dialect)(_records)
            .values(
                user_id=param("p_user", _records.c.user_id), key=param("p_key", _records.c.key),
                request_hash=param("p_hash", _records.c.request_hash), response_status=_IN_PROGRESS,
                response_body=b"", created_at=param("p_at", _records.c.created_at),
                expires_at=param("p_expires", _records.c.expires_at),
            )
            .on_conflict_do_nothing(index_elements=["user_id", "key"])
            .returning(_records.c.id)
        )
    return stmt


class KeyReused(Exception):
    """The key was used with a different request."""


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes


@dataclass(frozen=True)
class Claim:
    """This request holds the key (the in-progress record `id`) until its transaction ends."""

    id: int


def request_hash(method: str, path: str, payload: Any) -> str:
    """Fingerprint of a request: method, path and the JSON body in canonical form."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def claim(user_id: int, key: str, fingerprint: str) -> StoredResponse | Claim:
    """Claim `key` for this request, or return the answer stored for it.

    Raises KeyReused when the key belongs to a different request.
    """
    conn = connection()
    at = now()
    params = {"p_user": user_id, "p_key": key, "p_hash": fingerprint, "p_at": at, "p_expires": at + RETENTION}
    insert = _claim_statement(conn.dialect.name)
    # Twice at most: the holder of the key may release it (a 429) between our insert and our read.
    for _ in range(2):
        record_id = conn.execute(insert, params).scalar_one_or_none()
        if record_id is not None:
            return Claim(record_id)
        existing = conn.execute(_FIND, params).first()  # the holder has committed by now
        if existing is not None:
            if existing.request_hash != fingerprint:
                raise KeyReused(key)
            return StoredResponse(existing.response_status, existing.response_body)
    raise RuntimeError(f"idempotency key {key!r} is being claimed and released concurrently; try again")


def store(record: Claim, status: int, body: bytes) -> None:
    """Save the answer on the claimed record (committed with the work)."""
    connection().execute(_STORE, {"p_id": record.id, "p_status": status, "p_body": body})


def release(record: Claim) -> None:
    """Give the key up (the request ended in an answer that is not replayed, e.g. 429)."""
    connection().execute(_RELEASE, {"p_id": record.id})
