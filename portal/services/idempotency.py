"""API idempotency: the first answer to a key is stored and replayed byte for byte.

The record is inserted *before* the work, in the same transaction. A concurrent request with
the same key blocks on the unique index until the first commits, then finds the stored answer
(or, if the first rolled back, proceeds itself). So one key does the work once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from portal.clock import now
from portal.extensions import db
from portal.models import IdempotencyRecord

#: Keys are kept at least this long (the purge job deletes them afterwards).
RETENTION = timedelta(hours=48)
_IN_PROGRESS = 0


class KeyReused(Exception):
    """The key was used with a different request."""


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes


def request_hash(method: str, path: str, payload: Any) -> str:
    """Fingerprint of a request: method, path and the JSON body in canonical form."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def claim(user_id: int, key: str, fingerprint: str) -> StoredResponse | IdempotencyRecord:
    """Claim `key` for this request, or return the answer stored for it.

    Raises KeyReused when the key belongs to a different request.
    """
    existing = _find(user_id, key)
    if existing is None:
        record = IdempotencyRecord(user_id=user_id, key=key, request_hash=fingerprint, response_status=_IN_PROGRESS,
                                   response_body=b"", created_at=now(), expires_at=now() + RETENTION)
        try:
            with db.session.begin_nested():
                db.session.add(record)
            return record
        except IntegrityError:  # a concurrent request holds the key and has committed by now
            existing = _find(user_id, key)
            if existing is None:
                raise
    if existing.request_hash != fingerprint:
        raise KeyReused(key)
    return StoredResponse(existing.response_status, existing.response_body)


def store(record: IdempotencyRecord, status: int, body: bytes) -> None:
    """Save the answer on the claimed record (committed with the work)."""
    record.response_status, record.response_body = status, body
    db.session.flush()


def release(record: IdempotencyRecord) -> None:
    """Give the key up (the request ended in an answer that is not replayed, e.g. 429)."""
    db.session.delete(record)
    db.session.flush()


def _find(user_id: int, key: str) -> IdempotencyRecord | None:
    return db.session.scalar(
        sa.select(IdempotencyRecord).where(IdempotencyRecord.user_id == user_id, IdempotencyRecord.key == key)
        .execution_options(populate_existing=True)
    )
