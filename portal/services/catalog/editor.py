"""The plan editor's writes: plan fields, visibility, archiving, the feature catalogue, and each plan
feature's settings with its tier table.

Every write validates all of its input before it writes anything, flushes (the request commits once)
and adds exactly one audit row. Errors are `EditorError`s naming the field, and for a tier table the
bad tier, so a form can show them where they belong. Plans are edited in place: renewals charge the
plan's price at the time, and invoices copy their lines, so a new price applies from each
subscriber's next renewal and past invoices never change.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields as dataclass_fields, replace
from decimal import Decimal
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from portal.billing.features import FeatureType, RateWindow
from portal.billing.lifecycle import LIVE_STATUSES
from portal.billing.money import UnknownCurrency, normalize_currency
from portal.billing.periods import IntervalUnit
from portal.billing.pricing import PricingConfigError, PricingModel, Tier, TierTableError, build_pricing
from portal.extensions import db
from portal.models import Feature, Plan, PlanFeature, PricingTier, Subscription
from portal.services import catalog
from portal.services.audit import audit
from portal.services.catalog import CatalogError, _validate_grant

__all__ = [
    "CODE_PATTERN", "EditorError", "FeatureSettings", "PlanFields", "PlanUpdate", "archive_plan", "check_plan_fields",
    "check_settings", "create_feature", "create_plan", "has_subscriptions", "live_subscribers", "preview_plan",
    "scheduled_subscribers", "set_plan_feature", "set_visibility", "subscribers_by_plan", "update_feature",
    "update_plan",
]

#: Plan and feature codes appear in URLs and the API: lower-case letters, digits, "-" and "_".
CODE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: The most a plan may cost per period, in minor units (ten million major units).
MAX_PRICE = 10**9
#: Interval counts and trial lengths beyond these are typing mistakes.
MAX_INTERVAL_COUNT = 365
MAX_TRIAL_DAYS = 365
#: Prices are stored as NUMERIC(24, 10).
MAX_PRICE_DIGITS, MAX_PRICE_DECIMALS = 14, 10


class EditorError(CatalogError):
    """Input the editor refuses; `field` names the form field, `tier` the 1-based tier at fault."""

    def __init__(self, message: str, *, field: str | None = None, tier: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.tier = tier


# --- what the forms hand over ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanFields:
    """A plan's editable fields, parsed (the price in minor units of `currency`)."""

    code: str
    name: str
    price_amount: int
    currency: str = "USD"
    interval_unit: IntervalUnit = IntervalUnit.MONTH
    interval_count: int = 1
    trial_days: int = 0
    is_public: bool = False
    description: str = ""
    sort_order: int = 0

    @classmethod
    def of(cls, plan: Plan) -> PlanFields:
        return cls(**{f.name: getattr(plan, f.name) for f in dataclass_fields(cls)})


@dataclass(frozen=True)
class FeatureSettings:
    """What a plan grants of one feature: on/off, limit and window, overage, and pricing with its tiers."""

    enabled: bool = True
    limit: int | None = None
    window: RateWindow | None = None
    overage_allowed: bool = False
    pricing_model: PricingModel | None = None
    unit_price: Decimal | None = None
    free_units: int = 0
    package_size: int | None = None
    package_price: Decimal | None = None
    tiers: tuple[Tier, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, pf: PlanFeature) -> FeatureSettings:
        tiers = tuple(Tier(t.first_unit, t.last_unit, t.unit_price, t.flat_fee) for t in pf.tiers)
        values = {f.name: getattr(pf, f.name) for f in dataclass_fields(cls) if f.name != "tiers"}
        return cls(**values, tiers=tiers)


@dataclass(frozen=True)
class PlanUpdate:
    """What an edit changed ({field: (old, new)}) and how many live subscriptions it reaches."""

    plan: Plan
    changes: dict[str, tuple[Any, Any]]
    subscribers: int
    scheduled: int

    @property
    def billing_changed(self) -> bool:
        """The price or the billing interval changed: subscribers see it at their next renewal."""
        return bool({"price_amount", "interval_unit", "interval_count"} & set(self.changes))


# --- reads the editor needs --------------------------------------------------------------------------------

def live_subscribers(plan_id: int) -> int:
    """Live subscriptions (trialing, active, past due) on the plan: whom a new price reaches."""
    return db.session.scalar(
        sa.select(sa.func.count()).select_from(Subscription)
        .where(Subscription.plan_id == plan_id, Subscription.status.in_(LIVE_STATUSES))
    ) or 0


def scheduled_subscribers(plan_id: int) -> int:
    """Live subscriptions scheduled to move to the plan at their period end (a downgrade)."""
    return db.session.scalar(
        sa.select(sa.func.count()).select_from(Subscription)
        .where(Subscription.scheduled_plan_id == plan_id, Subscription.status.in_(LIVE_STATUSES))
    ) or 0


def subscribers_by_plan() -> dict[int, int]:
    """Live subscriptions per plan id (plans without any are absent)."""
    rows = db.session.execute(
        sa.select(Subscription.plan_id, sa.func.count()).where(Subscription.status.in_(LIVE_STATUSES))
        .group_by(Subscription.plan_id)
    )
    return {plan_id: count for plan_id, count in rows}


def has_subscriptions(plan_id: int) -> bool:
    """Whether any subscription, live or ended, was ever on the plan (its code and currency are then fixed)."""
    return db.session.scalar(sa.select(Subscription.id).where(Subscription.plan_id == plan_id).limit(1)) is not None


# --- plans -----------------------------------------------------------------------------------------------

def check_plan_fields(fields: PlanFields, plan: Plan | None = None) -> PlanFields:
    """Validate a plan's fields (for `plan` when editing); returns them normalised."""
    code = fields.code.strip()
    name = fields.name.strip()
    if not CODE_PATTERN.fullmatch(code):
        raise EditorError("Use 1 to 64 lower-case letters, digits, - or _ (the code appears in URLs and the API).",
                          field="code")
    if not name:
        raise EditorError("Give the plan a name.", field="name")
    if len(name) > 120:
        raise EditorError("The name can be at most 120 characters.", field="name")
    try:
        currency = normalize_currency(fields.currency)
    except UnknownCurrency:
        raise EditorError(f"{fields.currency.strip()!r} is not an ISO 4217 currency code (USD, EUR, GBP…).",
                          field="currency") from None
    if fields.price_amount < 0:
        raise EditorError("The price cannot be negative.", field="price")
    if fields.price_amount > MAX_PRICE:
        raise EditorError("That price is too large.", field="price")
    if not 1 <= fields.interval_count <= MAX_INTERVAL_COUNT:
        raise EditorError(f"Bill every 1 to {MAX_INTERVAL_COUNT} intervals.", field="interval_count")
    if not 0 <= fields.trial_days <= MAX_TRIAL_DAYS:
        raise EditorError(f"A trial lasts 0 to {MAX_TRIAL_DAYS} days.", field="trial_days")
    taken = db.session.scalar(sa.select(Plan.id).where(Plan.code == code))
    if taken is not None and (plan is None or taken != plan.id):
        raise EditorError(f"Another plan already has the code {code!r}.", field="code")
    if plan is not None:
        if plan.is_default and fields.price_amount != 0:
            raise EditorError("The default plan is where customers fall back to: it must stay free.", field="price")
        fixed = [(name_, label) for name_, label, new in (("code", "code", code), ("currency", "currency", currency))
                 if getattr(plan, name_) != new]
        if fixed and has_subscriptions(plan.id):
            name_, label = fixed[0]
            raise EditorError(f"The {label} cannot change once the plan has had subscribers "
                              "(their invoices and API clients refer to it).", field=name_)
    return replace(fields, code=code, name=name, currency=currency, description=fields.description.strip())


def create_plan(fields: PlanFields, *, actor_id: int) -> Plan:
    """A new plan (hidden unless `fields.is_public`); audited as plan.create."""
    fields = check_plan_fields(fields)
    try:
        with db.session.begin_nested():
            plan = catalog.create_plan(
                fields.code, fields.name, price_amount=fields.price_amount, currency=fields.currency,
                interval_unit=fields.interval_unit, interval_count=fields.interval_count,
                trial_days=fields.trial_days, description=fields.description, is_public=fields.is_public,
                sort_order=fields.sort_order,
            )
    except IntegrityError:  # another admin took the code since the check
        raise EditorError(f"Another plan already has the code {fields.code!r}.", field="code") from None
    audit("plan.create", plan, actor_id=actor_id, data={"code": plan.code, "fields": _jsonable(fields.__dict__)})
    return plan


def update_plan(plan: Plan, fields: PlanFields, *, actor_id: int) -> PlanUpdate:
    """Change a plan's fields in place; audited as plan.update with what changed.

    A new price or interval reaches live subscribers at their next renewal (renewals price the plan as
    it is then); invoices already issued keep their own lines.
    """
    _lock(plan)
    fields = check_plan_fields(fields, plan)
    if fields.is_public and plan.is_archived:
        raise EditorError("An archived plan cannot be listed.", field="is_public")
    changes = {f.name: (getattr(plan, f.name), getattr(fields, f.name)) for f in dataclass_fields(PlanFields)
               if getattr(plan, f.name) != getattr(fields, f.name)}
    try:
        with db.session.begin_nested():  # a code taken meanwhile undoes this edit only
            for name, (_, new) in changes.items():
                setattr(plan, name, new)
            db.session.flush()
    except IntegrityError:
        raise EditorError(f"Another plan already has the code {fields.code!r}.", field="code") from None
    update = PlanUpdate(plan, changes, live_subscribers(plan.id), scheduled_subscribers(plan.id))
    audit("plan.update", plan, actor_id=actor_id, data={
        "code": plan.code, "changes": _jsonable(changes), "live_subscribers": update.subscribers,
    })
    return update


def set_visibility(plan: Plan, public: bool, *, actor_id: int) -> Plan:
    """Publish a plan on the plans page, or hide it (its subscribers keep it); audited as plan.publish or
    plan.hide."""
    _lock(plan)
    if public and plan.is_archived:
        raise EditorError("An archived plan cannot be published.", field="is_public")
    was = plan.is_public
    plan.is_public = public
    db.session.flush()
    audit("plan.publish" if public else "plan.hide", plan, actor_id=actor_id,
          data={"code": plan.code, "was_public": was})
    return plan


def archive_plan(plan: Plan, *, actor_id: int) -> int:
    """Retire a plan: no longer offered or listed; live subscribers keep it until they change plan.
    Returns how many live subscriptions stay on it; audited as plan.archive."""
    _lock(plan)
    if plan.is_default:
        raise EditorError("The default plan cannot be archived: customers fall back to it.")
    if plan.is_archived:
        raise EditorError("The plan is already archived.")
    plan.is_archived = True
    plan.is_public = False
    db.session.flush()
    staying = live_subscribers(plan.id)
    audit("plan.archive", plan, actor_id=actor_id, data={"code": plan.code, "live_subscribers": staying})
    return staying


def _lock(plan: Plan) -> None:
    """Serialise edits of one plan (SELECT … FOR UPDATE on PostgreSQL; SQLite's writer lock already does)."""
    db.session.refresh(plan, with_for_update=True)


# --- the feature catalogue ---------------------------------------------------------------------------------

def create_feature(code: str, name: str, type: FeatureType, unit_name: str = "unit", description: str = "", *,
                   actor_id: int) -> Feature:
    """A new feature in the catalogue; audited as feature.create."""
    code, name, unit_name = code.strip(), name.strip(), unit_name.strip()
    if not CODE_PATTERN.fullmatch(code):
        raise EditorError("Use 1 to 64 lower-case letters, digits, - or _ (clients send this code to the API).",
                          field="code")
    if db.session.scalar(sa.select(Feature.id).where(Feature.code == code)) is not None:
        raise EditorError(f"Another feature already has the code {code!r}.", field="code")
    _check_feature_words(name, unit_name)
    try:
        with db.session.begin_nested():
            feature = catalog.get_or_create_feature(code, name, type, unit_name, description.strip())
    except IntegrityError:
        raise EditorError(f"Another feature already has the code {code!r}.", field="code") from None
    audit("feature.create", feature, actor_id=actor_id,
          data={"code": code, "name": name, "type": type.value, "unit_name": unit_name})
    return feature


def update_feature(feature: Feature, name: str, unit_name: str, description: str = "", *, actor_id: int) -> Feature:
    """Rename a feature or its unit (its code and type are fixed: clients and plan settings depend on them);
    audited as feature.update."""
    name, unit_name, description = name.strip(), unit_name.strip(), description.strip()
    _check_feature_words(name, unit_name)
    changes = {}
    for attr, new in (("name", name), ("unit_name", unit_name), ("description", description)):
        if getattr(feature, attr) != new:
            changes[attr] = (getattr(feature, attr), new)
            setattr(feature, attr, new)
    db.session.flush()
    audit("feature.update", feature, actor_id=actor_id, data={"code": feature.code, "changes": _jsonable(changes)})
    return feature


def _check_feature_words(name: str, unit_name: str) -> None:
    if not name:
        raise EditorError("Give the feature a name.", field="name")
    if len(name) > 120:
        raise EditorError("The name can be at most 120 characters.", field="name")
    if len(unit_name) > 32:
        raise EditorError("The unit can be at most 32 characters.", field="unit_name")


# --- a plan's feature settings and tier table -------------------------------------------------------------------

#: The settings each pricing model reads; the others are cleared so nothing stale lingers.
_MODEL_PARAMS: dict[PricingModel | None, frozenset[str]] = {
    None: frozenset(),
    PricingModel.FLAT: frozenset({"unit_price", "free_units"}),
    PricingModel.PACKAGE: frozenset({"package_size", "package_price", "free_units"}),
    PricingModel.TIERED: frozenset({"tiers"}),
    PricingModel.VOLUME: frozenset({"tiers"}),
}
_PRICING_PARAMS = ("unit_price", "free_units", "package_size", "package_price", "tiers")
_CLEARED: dict[str, Any] = {"unit_price": None, "free_units": 0, "package_size": None, "package_price": None,
                            "tiers": ()}
#: Which field a catalogue rule's message is about.
_GRANT_FIELDS = (("window", "window"), ("overage", "overage_allowed"), ("limit", "limit"), ("priced", "pricing_model"),
                 ("pricing model", "pricing_model"))
#: What each model cannot do without, asked for in words before the model's own checks.
_REQUIRED = (
    ("unit_price", PricingModel.FLAT, "Enter the price per unit."),
    ("package_size", PricingModel.PACKAGE, "Enter how many units one package holds."),
    ("package_price", PricingModel.PACKAGE, "Enter the price of one package."),
)
_TIER_RE = re.compile(r"^tier (\d+)\b", re.IGNORECASE)


def check_settings(feature: Feature, settings: FeatureSettings) -> FeatureSettings:
    """Validate a plan feature's settings with the catalogue's rules and the pricing model's own (a tier table
    is checked by pricing.validate_tiers, whose message names the bad tier); returns them with what the
    feature type and the pricing model do not use cleared."""
    kind = feature.type
    if kind is FeatureType.BOOLEAN:
        settings = replace(settings, limit=None)
    if kind is not FeatureType.RATE:
        settings = replace(settings, window=None)
    if kind is not FeatureType.QUOTA:
        settings = replace(settings, overage_allowed=False)
    keep = _MODEL_PARAMS[settings.pricing_model]
    settings = replace(settings, **{p: _CLEARED[p] for p in _PRICING_PARAMS if p not in keep})
    try:
        _validate_grant(feature, settings.limit, settings.window, settings.overage_allowed, settings.pricing_model)
    except CatalogError as exc:
        message = _sentence(str(exc).removeprefix(f"{feature.name}: "))
        where = next((f for word, f in _GRANT_FIELDS if word in message.lower()), None)
        raise EditorError(message, field=where) from None
    for name in ("unit_price", "package_price"):
        _check_decimal(getattr(settings, name), name)
    for tier_no, tier in enumerate(settings.tiers, start=1):
        for name in ("unit_price", "flat_fee"):
            _check_decimal(getattr(tier, name), "tiers", tier_no)
        for bound in (tier.first_unit, tier.last_unit):
            if bound is not None and bound > catalog.MAX_LIMIT:
                raise EditorError(f"Tier {tier_no}: units go up to {catalog.MAX_LIMIT:,}.", field="tiers", tier=tier_no)
    for name, needed_by, message in _REQUIRED:
        if settings.pricing_model is needed_by and getattr(settings, name) is None:
            raise EditorError(message, field=name)
    if settings.pricing_model is not None:
        params = {p: getattr(settings, p) for p in keep}
        if "tiers" in params:
            params["tiers"] = list(settings.tiers)
        try:
            build_pricing(settings.pricing_model, **params)
        except TierTableError as exc:
            message = _sentence(str(exc))
            match = _TIER_RE.match(message)
            raise EditorError(message, field="tiers", tier=int(match[1]) if match else None) from None
        except (PricingConfigError, TypeError) as exc:
            message = str(exc)
            where = next((p for p in sorted(keep, key=len, reverse=True) if p in message), None)
            raise EditorError(_sentence(_words(message)), field=where) from None
    return settings


def set_plan_feature(plan: Plan, feature: Feature, settings: FeatureSettings, *, actor_id: int) -> PlanFeature:
    """Grant `feature` on `plan` with `settings`, or change what it grants; the tier table is replaced whole
    (old rows deleted, new ones inserted, in this transaction). Audited as plan_feature.create or
    plan_feature.update, with the changes and the old and new tiers."""
    _lock(plan)
    settings = check_settings(feature, settings)
    pf = db.session.scalar(
        sa.select(PlanFeature).where(PlanFeature.plan_id == plan.id, PlanFeature.feature_id == feature.id)
    )
    created = pf is None
    before = FeatureSettings() if created else FeatureSettings.of(pf)
    if created:
        pf = PlanFeature(plan=plan, feature=feature)
        db.session.add(pf)
    for f in dataclass_fields(FeatureSettings):
        if f.name != "tiers":
            setattr(pf, f.name, getattr(settings, f.name))
    tiers_changed = created or before.tiers != settings.tiers
    if tiers_changed:
        if pf.tiers:
            pf.tiers.clear()
            db.session.flush()  # the old rows go before the new ones take their positions
        for position, tier in enumerate(settings.tiers, start=1):
            pf.tiers.append(PricingTier(position=position, first_unit=tier.first_unit, last_unit=tier.last_unit,
                                        unit_price=Decimal(tier.unit_price), flat_fee=Decimal(tier.flat_fee)))
    db.session.flush()
    changes = {f.name: (getattr(before, f.name), getattr(settings, f.name)) for f in dataclass_fields(FeatureSettings)
               if f.name != "tiers" and getattr(before, f.name) != getattr(settings, f.name)}
    data: dict[str, Any] = {"plan": plan.code, "feature": feature.code, "changes": _jsonable(changes)}
    if tiers_changed and (before.tiers or settings.tiers):
        data["tiers"] = {"from": [t.to_config() for t in before.tiers], "to": [t.to_config() for t in settings.tiers]}
    audit("plan_feature.create" if created else "plan_feature.update", pf, actor_id=actor_id, data=data)
    return pf


def preview_plan(plan: Plan, fields: PlanFields | None = None, feature: Feature | None = None,
                 settings: FeatureSettings | None = None) -> Plan:
    """A transient copy of `plan` with unsaved `fields` and one feature's unsaved `settings` applied, for the
    live preview: never added to the session, so nothing of it can be written."""
    fields = fields or PlanFields.of(plan)
    copy = Plan(id=plan.id, is_default=plan.is_default, is_archived=plan.is_archived, **fields.__dict__)
    features = []
    replaced = False
    for pf in plan.features:
        if feature is not None and settings is not None and pf.feature_id == feature.id:
            features.append(_transient_feature(feature, settings))
            replaced = True
        else:
            features.append(_transient_feature(pf.feature, FeatureSettings.of(pf)))
    if feature is not None and settings is not None and not replaced:
        features.append(_transient_feature(feature, settings))
    copy.features = features
    return copy


def _transient_feature(feature: Feature, settings: FeatureSettings) -> PlanFeature:
    values = {f.name: getattr(settings, f.name) for f in dataclass_fields(FeatureSettings) if f.name != "tiers"}
    tiers = [PricingTier(position=i, first_unit=t.first_unit, last_unit=t.last_unit, unit_price=Decimal(t.unit_price),
                         flat_fee=Decimal(t.flat_fee)) for i, t in enumerate(settings.tiers, start=1)]
    return PlanFeature(feature_id=feature.id, feature=feature, tiers=tiers, **values)


# --- helpers -----------------------------------------------------------------------------------------------------

def _check_decimal(value: Decimal | None, field_name: str, tier: int | None = None) -> None:
    if value is None:
        return
    problem = None
    if not value.is_finite() or value < 0:
        problem = "prices cannot be negative"
    elif -int(value.normalize().as_tuple().exponent) > MAX_PRICE_DECIMALS:
        problem = f"a price has at most {MAX_PRICE_DECIMALS} decimals"
    elif value >= Decimal(10) ** MAX_PRICE_DIGITS:
        problem = "that price is too large"
    if problem:
        raise EditorError(_sentence(f"Tier {tier}: {problem}" if tier else problem), field=field_name, tier=tier)


def _sentence(message: str) -> str:
    message = message.strip()
    message = message[:1].upper() + message[1:]
    return message if message.endswith((".", ")")) else message + "."


def _words(message: str) -> str:
    """A pricing message for people: "package_size must be >= 1" → "package size must be >= 1"."""
    return message.replace("_", " ")


def _jsonable(value: Any) -> Any:
    """Audit data as JSON: Decimals as strings, enums as their values, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tier):
        return value.to_config()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    return value
