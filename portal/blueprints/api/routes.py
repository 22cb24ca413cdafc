"""Usage API endpoints (DESIGN §5). Thin: authenticate, parse, call a service, answer JSON."""
from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from flask import Response, current_app, g, request, url_for
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from portal.billing.features import FeatureType
from portal.blueprints.api import bp
from portal.blueprints.api.openapi import build_spec, operation
from portal.blueprints.api.schemas import (
    DailyTotal, ErrorResponse, FeatureHistory, FeatureUsage, Meter, PlanFeatureView, PlanList, PlanRef, PlanView,
    RecordRequest, Refusal, Restriction, SubscriptionView, UsageHistory, UsageRequest, UsageSummary,
)
from portal.extensions import db
from portal.models import Plan, PlanFeature
from portal.services import api_keys, idempotency, usage
from portal.services.subscriptions import live_subscription
from portal.services.usage import meters

#: Bodies are tiny; anything bigger is refused before it is read whole.
MAX_BODY = 16 * 1024
AUTH_ERRORS = {401: (ErrorResponse, "Missing, unknown or revoked API key.")}
BODY_ERRORS = {400: (ErrorResponse, "Malformed JSON, a bad field or an unknown feature."),
               413: (ErrorResponse, "The body is larger than 16 KiB.")}
IDEMPOTENCY_HEADER = {"Idempotency-Key": {
    "required": False, "schema": {"type": "string", "maxLength": 200},
    "description": "Send the same key to retry safely: the first answer is replayed; another body → 409."}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _json(status: int, body: bytes | str | BaseModel | dict, headers: dict[str, str] | None = None) -> Response:
    if isinstance(body, BaseModel):
        body = body.model_dump_json(exclude_none=False)
    elif isinstance(body, dict):
        body = json.dumps(body)
    return Response(body, status=status, headers=headers, mimetype="application/json")


def error(status: int, code: str, message: str, field: str | None = None) -> Response:
    detail: dict[str, Any] = {"code": code, "message": message}
    if field:
        detail["field"] = field
    return _json(status, {"error": detail})


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    db.session.rollback()  # nothing half-written survives an error
    return error(exc.status, exc.code, exc.message, exc.field)


@bp.errorhandler(usage.UsageError)
def _usage_error(exc: usage.UsageError):
    """Bad usage input (an unknown feature, a bad quantity) is the client's 400."""
    db.session.rollback()
    return error(400, exc.code, exc.message, exc.field)


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc):
    db.session.rollback()
    return error(413, "payload_too_large", f"the body must be at most {MAX_BODY} bytes")


#: Endpoints that look their key up together with the feature's entitlement, in their own first
#: query (one round trip instead of two on the hot path): see _authenticate_with_entitlement.
_KEY_WITH_ENTITLEMENT = frozenset({"api.check", "api.record"})


def _invalid_key() -> ApiError:
    return ApiError(401, "invalid_api_key", "the API key is unknown or has been revoked")


@bp.before_request
def authenticate():
    """Every endpoint but the spec needs `Authorization: Bearer <key>`."""
    if request.endpoint == "api.openapi_json":
        return None
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return error(401, "missing_api_key", "send your API key as `Authorization: Bearer <key>`")
    g.raw_api_key = raw.strip()
    if request.endpoint in _KEY_WITH_ENTITLEMENT:
        return None
    _require_key()
    return None


def _require_key() -> None:
    """Look the key up alone (every endpoint but check and record); ApiError(401) when it is not active."""
    found = api_keys.authenticate(g.raw_api_key)
    if found is None:
        raise _invalid_key()
    g.api_key, g.api_user = found
    api_keys.touch(g.api_key)


def _authenticate_with_entitlement(feature_code: str, *, autocommit: bool) -> usage.Entitlement:
    """The key and the customer's entitlement to the feature, in one query; ApiError 401 or UsageError.

    `autocommit`: the request's statements may each commit by themselves (statements.connection).
    """
    found = api_keys.authenticate_with_entitlement(g.raw_api_key, feature_code, autocommit=autocommit)
    if found is None:
        raise _invalid_key()
    g.api_key, g.api_user, row = found
    api_keys.touch(g.api_key)
    return usage.entitlement_from_row(row, feature_code)


def _key_first(model: type[BaseModel]) -> tuple[Any, Any]:
    """`_body` for check and record, whose key is not looked up yet: a bad key answers 401 before a bad body."""
    try:
        return _body(model)
    except (ApiError, RequestEntityTooLarge):
        _require_key()
        raise


def _body(model: type[BaseModel]) -> tuple[Any, Any]:
    """The parsed JSON body and its validated model; ApiError(400/413) otherwise."""
    request.max_content_length = MAX_BODY
    raw = request.get_data(cache=True)
    if not raw:
        raise ApiError(400, "malformed_json", "send a JSON object body")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    try:
        return payload, model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        code = {"quantity": "invalid_quantity", "feature": "invalid_feature"}.get(field or "", "invalid_field")
        if first["type"] == "missing":
            code = "missing_field"
        elif first["type"] == "extra_forbidden":
            code = "unknown_field"
        raise ApiError(400, code, f"{field}: {first['msg']}" if field else first["msg"], field) from None


def _upgrade_url() -> str:
    return url_for("customer.plans", _external=True) if "customer.plans" in current_app.view_functions \
        else request.host_url.rstrip("/") + "/plans"


def _plans_allowing(feature_id: int, more_than: int | None, exclude_plan_id: int) -> list[PlanRef]:
    """Public plans whose limit for the feature beats `more_than` (None: any plan that enables it)."""
    rows = db.session.execute(
        sa.select(Plan, PlanFeature.limit)
        .join(PlanFeature, PlanFeature.plan_id == Plan.id)
        .where(PlanFeature.feature_id == feature_id, PlanFeature.enabled.is_(True), Plan.is_public.is_(True),
               Plan.is_archived.is_(False), Plan.id != exclude_plan_id)
        .order_by(Plan.price_amount, Plan.sort_order)
    ).all()
    return [PlanRef(code=p.code, name=p.name, price_amount=p.price_amount, currency=p.currency, limit=limit)
            for p, limit in rows if more_than is None or limit is None or limit > more_than]


def _refusal(result: usage.UsageResult, plan_id: int, feature_id: int, limit: int | None) -> Refusal:
    return Refusal(
        allowed=False, feature=result.feature, type=result.type.value, used=result.used, limit=result.limit,
        remaining=result.remaining, resets_at=result.resets_at, retry_after=result.retry_after,
        error={"code": result.code, "message": result.message},
        plans=_plans_allowing(feature_id, None if result.code == "feature_not_in_plan" else limit, plan_id),
        upgrade_url=_upgrade_url(),
    )


def _meter(result: usage.UsageResult) -> Meter:
    return Meter(allowed=True, feature=result.feature, type=result.type.value, quantity=result.quantity,
                 used=result.used, limit=result.limit, remaining=result.remaining, resets_at=result.resets_at,
                 cost=result.cost, currency=result.currency, event_id=result.event_id, replayed=result.replayed)


def _answer(result: usage.UsageResult, success: int, ent: usage.Entitlement) -> tuple[int, BaseModel, dict[str, str]]:
    if result.allowed:
        return success, _meter(result), {}
    refusal = _refusal(result, ent.plan.id, ent.feature.id, ent.limit)
    if result.code == "rate_limited":
        return 429, refusal, {"Retry-After": str(result.retry_after)}
    return 403, refusal, {}


@bp.post("/usage/check")
@operation("Would this use be allowed now? Changes nothing.", body=UsageRequest, responses={
    200: (Meter, "Allowed."), 403: (Refusal, "The plan or the quota forbids it."),
    429: (Refusal, "The RATE window is full; see Retry-After."), **BODY_ERRORS, **AUTH_ERRORS})
def check():
    """Check before using a feature."""
    _, body = _key_first(UsageRequest)
    ent = _authenticate_with_entitlement(body.feature, autocommit=usage.may_autocommit(recording=False, keyed=False))
    result = usage.check(g.api_user.id, body.feature, body.quantity, ent=ent)
    status, model, headers = _answer(result, 200, ent)
    return _json(status, model, headers)


@bp.post("/usage/record")
@operation("Check and record a use, atomically and exactly once per key.", body=RecordRequest,
           headers=IDEMPOTENCY_HEADER, responses={
               201: (Meter, "Recorded; the meter after it."), 403: (Refusal, "The plan or the quota forbids it."),
               409: (ErrorResponse, "The Idempotency-Key was used with a different body."),
               429: (Refusal, "The RATE window is full; see Retry-After."), **BODY_ERRORS, **AUTH_ERRORS})
def record():
    """Record after using a feature."""
    payload, body = _key_first(RecordRequest)
    key = request.headers.get("Idempotency-Key") or body.event_id
    ent = _authenticate_with_entitlement(body.feature,
                                         autocommit=usage.may_autocommit(recording=True, keyed=key is not None))
    user_id = g.api_user.id
    claim = None
    if key is not None:
        if not 1 <= len(key) <= 200:
            raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 200 characters",
                           "Idempotency-Key")
        try:
            claim = idempotency.claim(user_id, key, idempotency.request_hash("POST", request.path, payload))
        except idempotency.KeyReused:
            raise ApiError(409, "idempotency_key_reused",
                           "this Idempotency-Key was already used with a different request") from None
        if isinstance(claim, idempotency.StoredResponse):
            return _json(claim.status, claim.body, {"Idempotent-Replayed": "true"})
    result = usage.record(user_id, body.feature, body.quantity, idempotency_key=key, ent=ent)
    status, model, headers = _answer(result, 201, ent)
    payload_bytes = model.model_dump_json().encode()
    if claim is not None:
        if status == 429:  # a full window is temporary: the same key may be retried later
            idempotency.release(claim)
        else:
            idempotency.store(claim, status, payload_bytes)
    return _json(status, payload_bytes, headers)


@bp.get("/usage")
@operation("Every feature of the current plan with its meter.", responses={200: (UsageSummary, "The meters."),
                                                                          **AUTH_ERRORS})
def summary():
    """Real-time quota for all features."""
    board = meters.build(g.api_user.id)
    features = [
        FeatureUsage(
            feature=m.code, name=m.name, type=m.type.value, enabled=m.enabled,
            used=m.used if m.type is not FeatureType.BOOLEAN else None, limit=m.allowance, remaining=m.remaining,
            unlimited=m.is_unlimited, period_end=m.resets_at, window=m.window.value if m.window else None,
            cost=m.cost, currency=m.currency if m.cost is not None else None,
        )
        for m in board.meters
    ]
    sub = board.subscription
    answer = UsageSummary(plan=board.plan.code, status=sub.status.value if sub else "none",
                          period_start=board.period.start if board.period else None,
                          period_end=board.period.end if board.period else None, features=features)
    return _json(200, answer)


@bp.get("/usage/history")
@operation("Daily totals per feature over the last N days.", query={
    "days": {"required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 90, "default": 7}},
    "feature": {"required": False, "schema": {"type": "string", "maxLength": 64},
                "description": "Only this feature (all countable features when absent)."},
}, responses={200: (UsageHistory, "Daily totals, oldest first."), 400: (ErrorResponse, "Bad days or feature."),
              **AUTH_ERRORS})
def history():
    """Historical usage, 1 to 90 days."""
    raw_days = request.args.get("days", "7")
    if not raw_days.isdigit():
        raise ApiError(400, "invalid_days", "days must be a whole number from 1 to 90", "days")
    days = int(raw_days)
    code = request.args.get("feature")
    try:
        if code:
            found = {code: meters.history(g.api_user.id, code, days)}
        else:
            found = meters.histories(g.api_user.id, meters.build(g.api_user.id), days)
    except meters.MeterError as exc:
        field = "days" if "days" in str(exc) else "feature"
        raise ApiError(400, f"invalid_{field}", str(exc), field) from None
    answer = UsageHistory(days=days, features=[
        FeatureHistory(feature=c, days=[DailyTotal(day=t.day, quantity=t.quantity) for t in h.totals])
        for c, h in found.items()])
    return _json(200, answer)


@bp.get("/usage/restrictions/<feature>")
@operation("Why a feature is limited now and how to lift it.", responses={
    200: (Restriction, "The feature's restriction (restricted=false when the next use is allowed)."),
    404: (ErrorResponse, "No such feature."), **AUTH_ERRORS})
def restrictions(feature: str):
    """Restriction info per feature."""
    try:
        ent = usage.entitlement(g.api_user.id, feature)
        result = usage.check(g.api_user.id, feature, 1)
    except usage.UsageError as exc:
        raise ApiError(404, "unknown_feature", exc.message, "feature") from None
    lift: list[str] = []
    if not result.allowed:
        if result.code == "rate_limited":
            lift.append(f"wait {result.retry_after} s for the window to reset")
        elif result.code == "quota_exceeded":
            lift.append(f"wait for the next period on {result.resets_at:%d %b %Y}")
            if ent.plan_feature is not None and ent.plan_feature.pricing_model and \
                    ent.plan_feature.pricing_model.value == "package":
                lift.append("buy a package of extra units on the usage page")
        lift.append("upgrade to a plan that includes more")
    plans = _plans_allowing(ent.feature.id, None if result.code in (None, "feature_not_in_plan") else ent.limit,
                            ent.plan.id) if not result.allowed else []
    answer = Restriction(
        feature=ent.feature.code, name=ent.feature.name, type=ent.feature.type.value, restricted=not result.allowed,
        reason={"code": result.code, "message": result.message} if not result.allowed else None,
        enabled=ent.enabled, used=result.used, limit=result.limit, remaining=result.remaining,
        resets_at=result.resets_at, how_to_lift=lift, plans=plans, upgrade_url=_upgrade_url())
    return _json(200, answer)


@bp.get("/subscription")
@operation("The current subscription.", responses={200: (SubscriptionView, "The live subscription."),
                                                   404: (ErrorResponse, "No live subscription."), **AUTH_ERRORS})
def subscription():
    """The customer's live subscription."""
    sub = live_subscription(g.api_user.id)
    if sub is None:
        raise ApiError(404, "no_subscription", "there is no live subscription")
    plan = sub.plan
    answer = SubscriptionView(
        plan=plan.code, plan_name=plan.name, status=sub.status.value, price_amount=plan.price_amount,
        currency=plan.currency, interval=f"{plan.interval_count} {plan.interval_unit.value}",
        current_period_start=sub.current_period_start, current_period_end=sub.current_period_end,
        cancel_at_period_end=sub.cancel_at_period_end,
        scheduled_plan=sub.scheduled_plan.code if sub.scheduled_plan_id else None, grace_until=sub.grace_until)
    return _json(200, answer)


@bp.get("/plans")
@operation("Public plans with their features.", responses={200: (PlanList, "The plans."), **AUTH_ERRORS})
def plans():
    """The plan catalogue."""
    rows = db.session.scalars(
        sa.select(Plan).where(Plan.is_public.is_(True), Plan.is_archived.is_(False))
        .order_by(Plan.sort_order, Plan.price_amount)
    ).unique().all()
    answer = PlanList(plans=[
        PlanView(code=p.code, name=p.name, description=p.description, price_amount=p.price_amount,
                 currency=p.currency, interval=f"{p.interval_count} {p.interval_unit.value}",
                 trial_days=p.trial_days,
                 features=[PlanFeatureView(feature=pf.feature.code, name=pf.feature.name, type=pf.feature.type.value,
                                           enabled=pf.enabled, limit=pf.limit,
                                           window=pf.window.value if pf.window else None,
                                           pricing_model=pf.pricing_model.value if pf.pricing_model else None)
                           for pf in p.features])
        for p in rows])
    return _json(200, answer)


@bp.get("/openapi.json")
@operation("This document.", public=True, responses={200: (None, "The OpenAPI 3 document.")})
def openapi_json():
    """The OpenAPI document, generated from the code."""
    spec = current_app.extensions.get("openapi_spec")
    if spec is None:
        spec = current_app.extensions["openapi_spec"] = build_spec(current_app)
    return _json(200, spec)
