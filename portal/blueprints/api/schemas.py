"""Request and response bodies of the usage API. The OpenAPI document is generated from these."""
from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

FeatureTypeName = Literal["BOOLEAN", "QUOTA", "RATE", "USAGE"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UsageRequest(_Body):
    """Check or record `quantity` uses of a feature."""

    feature: StrictStr = Field(min_length=1, max_length=64, description="Feature code, e.g. `quiz`.")
    quantity: StrictInt = Field(default=1, gt=0, le=1_000_000_000, description="Units to use (a positive integer).")


class RecordRequest(UsageRequest):
    event_id: StrictStr | None = Field(
        default=None, min_length=1, max_length=200,
        description="Your id for this use; the same id is recorded once (like the Idempotency-Key header).")


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable reason, e.g. `quota_exceeded`.")
    message: str
    field: str | None = Field(default=None, description="The request field at fault, if any.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PlanRef(BaseModel):
    code: str
    name: str
    price_amount: int = Field(description="Minor units per billing period.")
    currency: str
    limit: int | None = Field(description="The feature's limit on that plan; null means unlimited.")


class Meter(BaseModel):
    allowed: bool
    feature: str
    type: FeatureTypeName
    quantity: int
    used: int | None = None
    limit: int | None = Field(default=None, description="Allowance this period or window, prepaid units included.")
    remaining: int | None = None
    resets_at: datetime | None = None
    cost: int | None = Field(default=None, description="USAGE features: cost so far this period, minor units.")
    currency: str | None = None
    event_id: int | None = None
    replayed: bool = False


class Refusal(BaseModel):
    allowed: Literal[False]
    feature: str
    type: FeatureTypeName
    used: int | None = None
    limit: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None
    retry_after: int | None = Field(default=None, description="RATE: seconds until the window has room.")
    error: ErrorDetail
    plans: list[PlanRef] = Field(description="Plans that would allow it.")
    upgrade_url: str


class FeatureUsage(BaseModel):
    feature: str
    name: str
    type: FeatureTypeName
    enabled: bool
    used: int | None
    limit: int | None
    remaining: int | None
    unlimited: bool
    period_end: datetime | None = Field(description="When the counter resets (period or window end).")
    window: Literal["minute", "hour", "day"] | None = None
    cost: int | None = None
    currency: str | None = None


class UsageSummary(BaseModel):
    plan: str
    status: str
    period_start: datetime | None
    period_end: datetime | None
    features: list[FeatureUsage]


class DailyTotal(BaseModel):
    day: date
    quantity: int


class FeatureHistory(BaseModel):
    feature: str
    days: list[DailyTotal]


class UsageHistory(BaseModel):
    days: int
    features: list[FeatureHistory]


class Restriction(BaseModel):
    feature: str
    name: str
    type: FeatureTypeName
    restricted: bool = Field(description="True when the next use would be refused.")
    reason: ErrorDetail | None
    enabled: bool
    used: int | None
    limit: int | None
    remaining: int | None
    resets_at: datetime | None
    how_to_lift: list[str]
    plans: list[PlanRef]
    upgrade_url: str


class SubscriptionView(BaseModel):
    plan: str
    plan_name: str
    status: str
    price_amount: int
    currency: str
    interval: str
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    scheduled_plan: str | None
    grace_until: datetime | None


class PlanFeatureView(BaseModel):
    feature: str
    name: str
    type: FeatureTypeName
    enabled: bool
    limit: int | None
    window: str | None
    pricing_model: str | None


class PlanView(BaseModel):
    code: str
    name: str
    description: str
    price_amount: int
    currency: str
    interval: str
    trial_days: int
    features: list[PlanFeatureView]


class PlanList(BaseModel):
    plans: list[PlanView]
