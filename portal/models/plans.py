"""The catalogue: features, plans, the features each plan grants, and tier tables."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.billing.features import FeatureType, RateWindow
from portal.billing.periods import IntervalUnit
from portal.billing.pricing import PricingModel
from portal.clock import now
from portal.extensions import db
from portal.models.types import ExactDecimal, IdType, MinorUnits, UTCDateTime, enum_column


class Feature(db.Model):
    __tablename__ = "features"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    #: Stable code clients use in the API ("quiz", "api_calls").
    code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(120))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    type: Mapped[FeatureType] = mapped_column(enum_column(FeatureType, "feature_type"))
    #: Singular unit shown next to numbers ("call", "SMS", "token").
    unit_name: Mapped[str] = mapped_column(sa.String(32), default="unit")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class Plan(db.Model):
    __tablename__ = "plans"
    __table_args__ = (
        sa.CheckConstraint("price_amount >= 0", name="price_not_negative"),
        sa.CheckConstraint("interval_count >= 1", name="interval_count_positive"),
        sa.CheckConstraint("trial_days >= 0", name="trial_days_not_negative"),
        sa.Index("ix_plans_public_order", "is_public", "is_archived", "sort_order"),
        # One default (Free) plan at most.
        sa.Index("uq_plans_one_default", "is_default", unique=True,
                 sqlite_where=sa.text("is_default"), postgresql_where=sa.text("is_default")),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    #: Stable code used in the API and URLs ("free", "premium").
    code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(120))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    #: Price of one billing period, in minor units of `currency`.
    price_amount: Mapped[int] = mapped_column(MinorUnits, default=0)
    currency: Mapped[str] = mapped_column(sa.String(3), default="USD")
    interval_unit: Mapped[IntervalUnit] = mapped_column(
        enum_column(IntervalUnit, "interval_unit"), default=IntervalUnit.MONTH
    )
    #: Billing period length in interval_units (30 with day: every 30 days).
    interval_count: Mapped[int] = mapped_column(sa.Integer, default=1)
    #: Free trial length in days, 0 for none (one trial per customer when switching from Free).
    trial_days: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: Listed on the plans page and open to switch to (unless archived).
    is_public: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    #: Retired: no longer offered, nor used as the default plan.
    is_archived: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: The plan every customer falls back to (Free); at most one.
    is_default: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: Position on the plans page, ascending (ties by id).
    sort_order: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now, onupdate=now)

    features: Mapped[list[PlanFeature]] = relationship(
        back_populates="plan", cascade="all, delete-orphan", order_by="PlanFeature.id"
    )

    @property
    def is_free(self) -> bool:
        return self.price_amount == 0


class PlanFeature(db.Model):
    """What one plan grants of one feature: on/off, a limit and window, and how extra use is priced."""

    __tablename__ = "plan_features"
    __table_args__ = (
        sa.UniqueConstraint("plan_id", "feature_id"),
        sa.CheckConstraint('"limit" IS NULL OR "limit" >= 0', name="limit_not_negative"),
        sa.CheckConstraint("free_units >= 0", name="free_units_not_negative"),
        sa.CheckConstraint("package_size IS NULL OR package_size > 0", name="package_size_positive"),
        sa.Index("ix_plan_features_feature", "feature_id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    plan_id: Mapped[int] = mapped_column(sa.ForeignKey("plans.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(sa.ForeignKey("features.id", ondelete="RESTRICT"))
    #: BOOLEAN features: granted or not. Other types: whether the plan includes the feature at all.
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    #: QUOTA: units per billing period; RATE: units per window. NULL means unlimited.
    limit: Mapped[int | None] = mapped_column("limit", sa.Integer)
    #: RATE only: the window the limit applies to.
    window: Mapped[RateWindow | None] = mapped_column(enum_column(RateWindow, "rate_window"))
    #: QUOTA only: use beyond the limit is allowed and billed by the pricing model.
    overage_allowed: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: How USAGE, QUOTA overage or PACKAGE top-ups are priced; NULL means not priced.
    pricing_model: Mapped[PricingModel | None] = mapped_column(enum_column(PricingModel, "pricing_model"))
    #: FLAT: price per unit, in major units (may be fractional: 0.0005).
    unit_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    #: USAGE and FLAT/PACKAGE: units included before charging starts.
    free_units: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: PACKAGE: units per package (a started package is charged in full).
    package_size: Mapped[int | None] = mapped_column(sa.Integer)
    #: PACKAGE: price of one package, in major units of the plan's currency (exact decimal).
    package_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)

    plan: Mapped[Plan] = relationship(back_populates="features")
    feature: Mapped[Feature] = relationship(lazy="joined")
    tiers: Mapped[list[PricingTier]] = relationship(
        back_populates="plan_feature", cascade="all, delete-orphan", order_by="PricingTier.position"
    )

    @property
    def is_unlimited(self) -> bool:
        return self.limit is None


class PricingTier(db.Model):
    __tablename__ = "pricing_tiers"
    __table_args__ = (
        sa.UniqueConstraint("plan_feature_id", "position"),
        sa.CheckConstraint("first_unit >= 0", name="first_unit_not_negative"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    plan_feature_id: Mapped[int] = mapped_column(sa.ForeignKey("plan_features.id", ondelete="CASCADE"))
    #: 1-based order of the tier in its table.
    position: Mapped[int] = mapped_column(sa.Integer)
    #: The tier's first unit, 1-based inclusive ([1, 100], [101, 300]) or as 0-based bounds ([0, 100],
    #: [100, 300] covers units 101–300); the first tier's 0 or 1 says which.
    first_unit: Mapped[int] = mapped_column(sa.Integer)
    #: NULL for the open-ended last tier.
    last_unit: Mapped[int | None] = mapped_column(sa.Integer)
    #: Price of each unit in the tier, in major units of the plan's currency (exact decimal).
    unit_price: Mapped[Decimal] = mapped_column(ExactDecimal)
    #: Major units added once: TIERED when any unit reaches the tier, VOLUME when the total lands in it.
    flat_fee: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal(0))

    plan_feature: Mapped[PlanFeature] = relationship(back_populates="tiers")
