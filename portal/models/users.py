"""Users (customers and staff) and their API keys."""
from __future__ import annotations

import enum
import secrets
from datetime import datetime

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.clock import now
from portal.extensions import db
from portal.models.types import IdType, UTCDateTime, enum_column


class Role(str, enum.Enum):
    CUSTOMER = "customer"
    SUPPORT = "support"
    ADMIN = "admin"


def new_session_token() -> str:
    return secrets.token_urlsafe(16)


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    #: Stored lower-cased; unique.
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    name: Mapped[str] = mapped_column(sa.String(120), default="")
    #: Argon2id hash (argon2-cffi's encoded form).
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    #: customer, or staff: support and admin (is_staff opens /staff/); only customers start
    #: on the default plan at sign-up.
    role: Mapped[Role] = mapped_column(enum_column(Role, "role"), default=Role.CUSTOMER)
    #: Rotated on logout and password change, which ends every other session.
    session_token: Mapped[str] = mapped_column(sa.String(64), default=new_session_token)
    #: False disables the account: Flask-Login refuses its sessions and its API keys stop working.
    is_active_account: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    #: The Stripe customer, created on first payment need.
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    #: ISO 4217 code the customer's wallet is opened in (DEFAULT_CURRENCY at sign-up).
    currency: Mapped[str] = mapped_column(sa.String(3), default="USD")
    #: IANA time zone the customer's emails show dates in ("Europe/Paris"); NULL = UTC.
    timezone: Mapped[str | None] = mapped_column(sa.String(64))
    #: Whether the customer wants the emails at 80 % and 100 % of a quota (lifecycle and receipt
    #: emails are not optional).
    usage_emails: Mapped[bool] = mapped_column(sa.Boolean, default=True, server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    #: Last successful password login (UTC); API key use does not count.
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="user", lazy="raise_on_sql")

    def get_id(self) -> str:
        # The session carries the token too, so rotating it logs out other sessions.
        return f"{self.id}:{self.session_token}"

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive accounts
        return self.is_active_account

    @property
    def is_staff(self) -> bool:
        return self.role in (Role.SUPPORT, Role.ADMIN)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def __repr__(self) -> str:
        return f"<User {self.id} {self.email} {self.role.value}>"


#: Staff search by name, from its start, case-insensitive (the customers page).
sa.Index("ix_users_name_lower", sa.func.lower(User.name))


class ApiKey(db.Model):
    __tablename__ = "api_keys"
    __table_args__ = (sa.Index("ix_api_keys_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(80))
    #: The first characters of the key, shown in lists ("sp_live_ab12…").
    prefix: Mapped[str] = mapped_column(sa.String(16))
    #: SHA-256 of the whole key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    #: Last API call with the key (UTC), written at most once a minute; NULL if never used.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="api_keys")
