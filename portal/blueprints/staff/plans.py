"""The plan editor (admins): plans, the feature catalogue, each plan's features and tier tables.

Thin views: parse a form, call portal.services.catalog.editor, render. Forms answer 422 with their
field errors and nothing written. The tier table grows and shrinks through small htmx endpoints that
only re-render it (a plain submit button does the same without JavaScript); the preview re-renders the
customers' plan card and the price of a sample use from the unsaved form as the admin types.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.datastructures import MultiDict
from wtforms import (
    BooleanField, FieldList, Form, FormField, IntegerField, SelectField, StringField, TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional, ValidationError
from wtforms.widgets import NumberInput

from portal import display
from portal.billing.estimate import estimate_plan
from portal.billing.features import FeatureType, RateWindow
from portal.billing.money import InvalidAmount, UnknownCurrency, from_minor, normalize_currency, parse_money
from portal.billing.periods import IntervalUnit
from portal.billing.pricing import PricingModel, Tier
from portal.blueprints.staff import admin_required, bp
from portal.extensions import db
from portal.models import Feature, Plan, PlanFeature
from portal.services.catalog import MAX_LIMIT, editor
from portal.services.catalog import views as catalog_views

#: The largest sample use the preview prices.
MAX_SAMPLE = 1_000_000_000

FEATURE_TYPE_LABELS = {
    FeatureType.BOOLEAN: "On/off",
    FeatureType.QUOTA: "Quota per billing period",
    FeatureType.RATE: "Rate limit per window",
    FeatureType.USAGE: "Usage, billed at period end",
}
MODEL_LABELS = {
    PricingModel.FLAT: "Flat: a price per unit",
    PricingModel.TIERED: "Graduated tiers: each tier's units at its price",
    PricingModel.VOLUME: "Volume tiers: every unit at the price of the tier reached",
    PricingModel.PACKAGE: "Packages: a price per started package",
}
PRICE_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
TIER_KEY_RE = re.compile(r"^tiers-(\d+)-(first_unit|last_unit|unit_price|flat_fee)$")
TIER_FIELDS = ("first_unit", "last_unit", "unit_price", "flat_fee")
TIER_MODELS = (PricingModel.TIERED.value, PricingModel.VOLUME.value)


def _strip(value):
    return value.strip() if isinstance(value, str) else value


def _lower(value):
    return value.lower() if isinstance(value, str) else value


def _sentence(message: str) -> str:
    message = message.strip()
    return (message[:1].upper() + message[1:]).rstrip(".") + "."


# --- forms -----------------------------------------------------------------------------------------------

class PriceField(StringField):
    """A unit price or fee in major units, with as many decimals as it needs ("0.0005"); data is a Decimal."""

    def process_formdata(self, valuelist):
        self.data = None
        text = (valuelist[0] if valuelist else "").strip()
        if not text:
            return
        if not PRICE_RE.fullmatch(text.replace(",", "")):
            raise ValueError("Enter a price in digits, like 0.0005 or 20 (no currency sign).")
        try:
            self.data = Decimal(text.replace(",", ""))
        except InvalidOperation:
            raise ValueError("Enter a price in digits, like 0.0005 or 20.") from None

    def _value(self):
        if self.raw_data:
            return self.raw_data[0]
        return "" if self.data is None else f"{self.data:f}"


def _whole(what: str, *, minimum: int = 0, maximum: int = MAX_LIMIT, required: bool = False, **kwargs):
    """An optional (or `required`) whole-number field from `minimum` to `maximum`; `what` names it in errors."""
    validators = [InputRequired(f"Enter {what}.") if required else Optional(),
                  NumberRange(min=minimum, max=maximum,
                              message=f"Enter a whole number from {minimum:,} to {maximum:,}.")]
    return IntegerField(validators=validators, widget=NumberInput(min=minimum, step=1),
                        render_kw={"inputmode": "numeric"}, **kwargs)


class PlanForm(FlaskForm):
    name = StringField("Name", filters=[_strip], validators=[DataRequired("Give the plan a name."), Length(max=120)])
    code = StringField("Code", filters=[_strip, _lower],
                       description="Used in URLs and the API: lower-case letters, digits, - and _.",
                       validators=[DataRequired("Give the plan a code, like team-monthly."), Length(max=64)])
    description = TextAreaField("Description", filters=[_strip], validators=[Length(max=2000)],
                                render_kw={"rows": 2})
    price = StringField("Price per period", filters=[_strip], description="In the plan's currency; 0 for free.",
                        validators=[DataRequired("Enter a price (0 for a free plan).")],
                        render_kw={"inputmode": "decimal", "placeholder": "9.99"})
    currency = StringField("Currency", filters=[_strip], default="USD",
                           validators=[DataRequired("Enter a currency code, like USD.")],
                           render_kw={"maxlength": 3, "autocapitalize": "characters"})
    interval_count = IntegerField("Bill every", default=1, widget=NumberInput(min=1, step=1),
                                  validators=[InputRequired("Enter how many intervals a period lasts."),
                                              NumberRange(1, editor.MAX_INTERVAL_COUNT,
                                                          message=f"Enter 1 to {editor.MAX_INTERVAL_COUNT}.")])
    interval_unit = SelectField("Interval", default=IntervalUnit.MONTH.value,
                                choices=[SelectChoice(u.value, f"{u.value}(s)") for u in IntervalUnit])
    trial_days = IntegerField("Free trial (days)", default=0, widget=NumberInput(min=0, step=1),
                              validators=[InputRequired("Enter 0 for no trial."),
                                          NumberRange(0, editor.MAX_TRIAL_DAYS,
                                                      message=f"Enter 0 to {editor.MAX_TRIAL_DAYS}.")])
    sort_order = IntegerField("Position on the plans page", default=0, widget=NumberInput(step=1),
                              description="Lower comes first.",
                              validators=[InputRequired("Enter a position (0 is fine)."),
                                          NumberRange(-1_000_000, 1_000_000)])
    is_public = BooleanField("Public: listed on the customers' plans page")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.minor: int | None = None

    def validate_currency(self, field) -> None:
        try:
            field.data = normalize_currency(field.data or "")
        except UnknownCurrency:
            raise ValidationError(f"{field.data!r} is not a currency code (USD, EUR, GBP…).") from None

    def validate_price(self, field) -> None:
        try:
            currency = normalize_currency(self.currency.data or "")
        except UnknownCurrency:
            return  # the currency field says what is wrong
        try:
            minor = parse_money(field.data or "", currency)
        except InvalidAmount as exc:
            raise ValidationError(_sentence(str(exc))) from exc
        if minor < 0:
            raise ValidationError("The price cannot be negative.")
        self.minor = minor

    def fields(self) -> editor.PlanFields:
        return editor.PlanFields(
            code=self.code.data, name=self.name.data, description=self.description.data or "",
            price_amount=self.minor, currency=self.currency.data, interval_unit=IntervalUnit(self.interval_unit.data),
            interval_count=self.interval_count.data, trial_days=self.trial_days.data, is_public=self.is_public.data,
            sort_order=self.sort_order.data,
        )

    def fill(self, plan: Plan) -> None:
        """Show a saved plan (its price in major units of its currency)."""
        self.process(data={
            "name": plan.name, "code": plan.code, "description": plan.description, "currency": plan.currency,
            "price": f"{plan_price_major(plan)}", "interval_count": plan.interval_count,
            "interval_unit": plan.interval_unit.value, "trial_days": plan.trial_days, "sort_order": plan.sort_order,
            "is_public": plan.is_public,
        })


def plan_price_major(plan: Plan) -> str:
    """A plan's price in major units of its currency, as typed in the form ("9.99")."""
    return f"{from_minor(plan.price_amount, plan.currency):f}"


class FeatureForm(FlaskForm):
    code = StringField("Code", filters=[_strip, _lower], description="Clients send it to the API; fixed once created.",
                       validators=[DataRequired("Give the feature a code, like api_calls."), Length(max=64)])
    name = StringField("Name", filters=[_strip], validators=[DataRequired("Give the feature a name."), Length(max=120)])
    type = SelectField("Type", choices=[SelectChoice(t.value, label) for t, label in FEATURE_TYPE_LABELS.items()],
                       description="Fixed once created.")
    unit_name = StringField("Unit", filters=[_strip], default="unit", validators=[Length(max=32)],
                            description='Singular, shown next to numbers: "call", "SMS", "seat".')
    description = TextAreaField("Description", filters=[_strip], validators=[Length(max=2000)], render_kw={"rows": 2})


class TierForm(Form):
    """One row of a tier table (no CSRF of its own: it lives inside the settings form)."""

    first_unit = IntegerField("From unit", widget=NumberInput(min=0, step=1),
                              validators=[InputRequired("Enter the tier's first unit."),
                                          NumberRange(0, MAX_LIMIT, message="Enter a whole number from 0.")])
    last_unit = IntegerField("To unit", widget=NumberInput(min=0, step=1), description="Empty: and up",
                             validators=[Optional(), NumberRange(0, MAX_LIMIT, message="Enter a whole number from 0.")])
    unit_price = PriceField("Price per unit", validators=[InputRequired("Enter a price per unit (0 for free).")])
    flat_fee = PriceField("Flat fee", validators=[Optional()])

    def tier(self) -> Tier:
        return Tier(self.first_unit.data, self.last_unit.data, self.unit_price.data, self.flat_fee.data or Decimal(0))


def settings_form(feature: Feature, *, formdata=None, data=None, csrf: bool = True) -> FlaskForm:
    """The settings form for one feature type: only the fields that type uses."""
    kind = feature.type

    class SettingsForm(FlaskForm):
        enabled = BooleanField("Included in this plan" if kind is not FeatureType.BOOLEAN else "On in this plan")

        def validate(self, extra_validators=None) -> bool:
            """Tier rows count only for the models priced by tiers (other models ignore them, as typed)."""
            valid = super().validate(extra_validators)
            if "tiers" in self and self.pricing_model.data not in TIER_MODELS:
                for entry in self.tiers.entries:
                    for sub in entry.form:
                        sub.errors = []
                self.tiers.errors = []
                valid = not self.errors
            return valid

        sample = _whole("a sample use", maximum=MAX_SAMPLE, label="Sample use for the preview",
                        description=f"{display.plural(feature.unit_name)} in one billing period; not saved.")

    if kind in (FeatureType.QUOTA, FeatureType.RATE):
        per = "per billing period" if kind is FeatureType.QUOTA else "per window"
        SettingsForm.limit = _whole("a limit", label=f"Limit ({display.plural(feature.unit_name)} {per})",
                                    description="Empty for unlimited.")
    if kind is FeatureType.RATE:
        SettingsForm.window = SelectField("Window", default=RateWindow.DAY.value,
                                          choices=[SelectChoice(w.value, f"per {w.value}") for w in RateWindow])
    if kind is FeatureType.QUOTA:
        SettingsForm.overage_allowed = BooleanField("Allow overage: use beyond the limit is billed by the pricing "
                                                    "below (otherwise the pricing sells top-ups)")
    if kind in (FeatureType.QUOTA, FeatureType.USAGE):
        choices = [] if kind is FeatureType.USAGE else [SelectChoice("", "Not priced")]
        choices += [SelectChoice(m.value, label) for m, label in MODEL_LABELS.items()]
        SettingsForm.pricing_model = SelectField("Pricing model", choices=choices,
                                                 default="" if kind is FeatureType.QUOTA else PricingModel.FLAT.value)
        SettingsForm.unit_price = PriceField("Price per unit",
                                             render_kw={"inputmode": "decimal", "placeholder": "0.01"})
        SettingsForm.free_units = _whole("free units", label="Free units", default=0,
                                         description="Units included before charging starts.")
        SettingsForm.package_size = _whole("a package size", minimum=1, label="Units per package")
        SettingsForm.package_price = PriceField("Price per package", render_kw={"inputmode": "decimal"})
        SettingsForm.tiers = FieldList(FormField(TierForm), min_entries=1)
    meta = {} if csrf else {"csrf": False}
    if formdata is not None:
        return SettingsForm(formdata=formdata, data=data, meta=meta)
    return SettingsForm(data=data, meta=meta)  # Flask-WTF reads the request's form on a POST


def settings_of(form: FlaskForm) -> editor.FeatureSettings:
    """The typed settings in a validated settings form."""
    def value(name, default=None):
        return form[name].data if name in form else default

    model = value("pricing_model")
    window = value("window")
    return editor.FeatureSettings(
        enabled=form.enabled.data, limit=value("limit"), window=RateWindow(window) if window else None,
        overage_allowed=bool(value("overage_allowed", False)),
        pricing_model=PricingModel(model) if model else None, unit_price=value("unit_price"),
        free_units=value("free_units") or 0, package_size=value("package_size"), package_price=value("package_price"),
        tiers=tuple(entry.form.tier() for entry in form.tiers) if "tiers" in form else (),
    )


def settings_data(pf: PlanFeature | None) -> dict:
    """A settings form's data for a saved plan feature (or a new one's defaults)."""
    if pf is None:
        return {"enabled": True, "free_units": 0, "tiers": [{"first_unit": 1}]}
    data = {
        "enabled": pf.enabled, "limit": pf.limit, "window": pf.window.value if pf.window else None,
        "overage_allowed": pf.overage_allowed, "pricing_model": pf.pricing_model.value if pf.pricing_model else "",
        "unit_price": pf.unit_price, "free_units": pf.free_units, "package_size": pf.package_size,
        "package_price": pf.package_price,
        "tiers": [{"first_unit": t.first_unit, "last_unit": t.last_unit, "unit_price": t.unit_price,
                   "flat_fee": t.flat_fee or None} for t in pf.tiers] or [{"first_unit": 1}],
    }
    return {k: v for k, v in data.items() if v is not None or k == "limit"}


# --- tier rows as typed (for adding and removing rows without saving) ----------------------------------------

def tier_rows(formdata) -> list[dict[str, str]]:
    """The tier rows of a submitted settings form, in order, exactly as typed."""
    rows: dict[int, dict[str, str]] = {}
    for key in formdata:
        match = TIER_KEY_RE.match(key)
        if match:
            rows.setdefault(int(match[1]), {})[match[2]] = formdata.get(key, "")
    return [rows[i] for i in sorted(rows)]


def with_rows(formdata, rows: list[dict[str, str]]) -> MultiDict:
    """The form data with its tier rows replaced by `rows`, numbered afresh."""
    data = MultiDict([(k, v) for k, v in formdata.items(multi=True) if not TIER_KEY_RE.match(k)])
    for i, row in enumerate(rows):
        for name in TIER_FIELDS:
            data.add(f"tiers-{i}-{name}", row.get(name, ""))
    return data


def next_row(rows: list[dict[str, str]]) -> dict[str, str]:
    """A new last row that starts where the current last one ends (when it has an end)."""
    if not rows:
        return {"first_unit": "1"}
    last = rows[-1].get("last_unit", "").strip()
    if not last.isdigit():
        return {}
    zero_based = rows[0].get("first_unit", "").strip() == "0"
    return {"first_unit": str(int(last) if zero_based else int(last) + 1)}


# --- shared pieces -----------------------------------------------------------------------------------------

def _plan(plan_id: int) -> Plan:
    plan = db.session.get(Plan, plan_id)
    if plan is None:
        abort(404)
    return plan


def _feature(feature_id: int) -> Feature:
    feature = db.session.get(Feature, feature_id)
    if feature is None:
        abort(404)
    return feature


def _plan_feature(plan: Plan, feature: Feature) -> PlanFeature | None:
    return next((pf for pf in plan.features if pf.feature_id == feature.id), None)


def _apply_error(form, exc: editor.EditorError) -> list[str]:
    """Put an editor error on its field; returns it as a form-level error when no field shows it (a tier
    table's error is shown above the table, the bad row marked)."""
    if exc.field and exc.field in form and exc.field not in ("tiers", "csrf_token"):
        form[exc.field].errors = list(form[exc.field].errors) + [str(exc)]
        return []
    return [str(exc)]


def _error_list(form) -> list[str]:
    """Every field error of a form in words, with the tier named for tier rows."""
    messages = []
    for field in form:
        if field.name == "csrf_token":
            continue
        if field.name == "tiers":
            for number, entry in enumerate(field.entries, start=1):
                for sub in entry.form:
                    messages += [f"Tier {number}, {sub.label.text.lower()}: {e}" for e in sub.errors]
            messages += [e for e in field.errors if isinstance(e, str)]
        else:
            messages += [f"{field.label.text}: {e}" for e in field.errors]
    return messages


def _card(plan: Plan) -> catalog_views.PlanCard:
    return catalog_views.plan_cards([plan])[0]


def _render(template: str, **context) -> str:
    """Render a plan editor template; the preview partial formats unit prices with display.unit_money."""
    return render_template(template, unit_money=display.unit_money, **context)


# --- the plan list, a new plan, one plan ------------------------------------------------------------------------

@bp.get("/plans")
@admin_required
def plans():
    """Every plan: price and interval, public or hidden, archived, live subscribers."""
    rows = db.session.scalars(sa.select(Plan).order_by(Plan.is_archived, Plan.sort_order, Plan.id)).all()
    counts = editor.subscribers_by_plan()
    return render_template("staff/plans.html", plans=rows, counts=counts, price_of=_price_of)


def _price_of(plan: Plan) -> str:
    return display.price_per_period(plan.price_amount, plan.currency, plan.interval_unit.value, plan.interval_count)


@bp.route("/plans/new", methods=["GET", "POST"])
@admin_required
def plan_new():
    """Create a plan; it stays hidden from customers until it is published."""
    form = PlanForm()
    if not form.is_submitted():  # a new plan goes after the others on the plans page
        last = db.session.scalar(sa.select(sa.func.max(Plan.sort_order)))
        form.sort_order.data = (last or 0) + 10
    if form.validate_on_submit():
        try:
            plan = editor.create_plan(form.fields(), actor_id=current_user.id)
        except editor.EditorError as exc:
            db.session.rollback()
            errors = _apply_error(form, exc)
        else:
            where = "listed on the plans page" if plan.is_public else "hidden until you publish it"
            flash(f"Created {plan.name} ({plan.code}), {where}. Now add its features.", "success")
            return redirect(url_for("staff.plan_edit", plan_id=plan.id))
        return _plan_page(None, form, errors=errors, status=422)
    return _plan_page(None, form, status=422 if form.is_submitted() else 200)


@bp.route("/plans/<int:plan_id>", methods=["GET", "POST"])
@admin_required
def plan_edit(plan_id: int):
    """A plan's fields, its features, and the actions on it (publish or hide, archive)."""
    plan = _plan(plan_id)
    form = PlanForm()
    if not form.is_submitted():
        form.fill(plan)
        return _plan_page(plan, form)
    if form.validate():
        try:
            update = editor.update_plan(plan, form.fields(), actor_id=current_user.id)
        except editor.EditorError as exc:
            db.session.rollback()
            return _plan_page(_plan(plan_id), form, errors=_apply_error(form, exc), status=422)
        flash(_update_message(update), "warning" if update.billing_changed and update.subscribers else "success")
        return redirect(url_for("staff.plan_edit", plan_id=plan.id))
    return _plan_page(plan, form, status=422)


def _update_message(update: editor.PlanUpdate) -> str:
    plan = update.plan
    if not update.changes:
        return f"Nothing changed on {plan.name}."
    if not update.billing_changed:
        return f"Saved {plan.name}."
    price = _price_of(plan)
    if not update.subscribers and not update.scheduled:
        return f"Saved {plan.name}: {price}. Nobody is subscribed to it yet."
    reach = []
    if update.subscribers:
        verb = "is" if update.subscribers == 1 else "are"
        reach.append(f"{display.units(update.subscribers, 'subscriber')} {verb} affected")
    if update.scheduled:
        reach.append(f"{display.units(update.scheduled, 'subscriber')} scheduled to switch to it")
    return (f"Saved {plan.name}: {price}. {' and '.join(reach)}: the new price applies from their next renewal. "
            "Past invoices do not change.")


def _plan_page(plan: Plan | None, form: PlanForm, *, errors: list[str] | None = None, status: int = 200):
    locked = plan is not None and editor.has_subscriptions(plan.id)
    if locked:
        form.code.render_kw = {**(form.code.render_kw or {}), "readonly": True}
        form.currency.render_kw = {**(form.currency.render_kw or {}), "readonly": True}
    context = {"plan": plan, "form": form, "errors": errors or [], "locked": locked, "section": "plan"}
    if plan is not None:
        granted = {pf.feature_id for pf in plan.features}
        context.update(
            subscribers=editor.live_subscribers(plan.id), scheduled=editor.scheduled_subscribers(plan.id),
            terms=[(pf, catalog_views.feature_term(pf, plan)) for pf in plan.features],
            addable=db.session.scalars(sa.select(Feature).where(Feature.id.not_in(granted) if granted else sa.true())
                                       .order_by(Feature.name)).all(),
            card=_card(plan),
        )
    else:
        context["card"] = None
    return _render("staff/plan_edit.html", **context), status


@bp.get("/plans/new/preview")
@bp.get("/plans/<int:plan_id>/preview")
@admin_required
def plan_preview(plan_id: int | None = None):
    """The customers' card for the plan form as typed (an htmx partial; saves nothing)."""
    plan = _plan(plan_id) if plan_id is not None else Plan(features=[])
    form = PlanForm(formdata=request.args, meta={"csrf": False})
    if not form.validate():
        return _render("staff/_plan_preview.html", card=None, errors=_error_list(form), estimate=None)
    preview = editor.preview_plan(plan, form.fields())
    return _render("staff/_plan_preview.html", card=_card(preview), errors=[], estimate=None)


@bp.post("/plans/<int:plan_id>/publish")
@admin_required
def plan_publish(plan_id: int):
    """List the plan on the customers' plans page."""
    return _visibility(plan_id, True)


@bp.post("/plans/<int:plan_id>/hide")
@admin_required
def plan_hide(plan_id: int):
    """Take the plan off the plans page; its subscribers keep it."""
    return _visibility(plan_id, False)


def _visibility(plan_id: int, public: bool):
    plan = _plan(plan_id)
    try:
        editor.set_visibility(plan, public, actor_id=current_user.id)
    except editor.EditorError as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        if public:
            flash(f"Published {plan.name}: customers see it on the plans page.", "success")
        else:
            flash(f"Hid {plan.name}: it is off the plans page; its subscribers keep it.", "success")
    return redirect(url_for("staff.plan_edit", plan_id=plan_id))


@bp.post("/plans/<int:plan_id>/archive")
@admin_required
def plan_archive(plan_id: int):
    """Retire a plan: no longer offered; live subscribers stay on it until they change plan."""
    plan = _plan(plan_id)
    try:
        staying = editor.archive_plan(plan, actor_id=current_user.id)
    except editor.EditorError as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("staff.plan_edit", plan_id=plan_id))
    who = (f"{display.units(staying, 'subscriber')} stay on it until they change plan"
           if staying else "nobody was on it")
    flash(f"Archived {plan.name}: no longer offered; {who}.", "success")
    return redirect(url_for("staff.plans"))


# --- the feature catalogue ------------------------------------------------------------------------------------

@bp.route("/features", methods=["GET", "POST"])
@admin_required
def features():
    """The feature catalogue, and a form to add a feature."""
    form = FeatureForm()
    errors: list[str] = []
    if form.validate_on_submit():
        try:
            feature = editor.create_feature(form.code.data, form.name.data, FeatureType(form.type.data),
                                            form.unit_name.data or "unit", form.description.data or "",
                                            actor_id=current_user.id)
        except editor.EditorError as exc:
            db.session.rollback()
            errors = _apply_error(form, exc)
        else:
            flash(f"Added {feature.name} ({feature.code}) to the catalogue. Grant it on a plan from the plan's page.",
                  "success")
            return redirect(url_for("staff.features"))
    return _features_page(form, None, errors, 422 if form.is_submitted() else 200)


@bp.route("/features/<int:feature_id>", methods=["GET", "POST"])
@admin_required
def feature_edit(feature_id: int):
    """Rename a feature or its unit (code and type are fixed)."""
    feature = _feature(feature_id)
    form = FeatureForm(obj=feature if request.method == "GET" else None)
    form.type.data = feature.type.value
    form.code.data = feature.code
    errors: list[str] = []
    if form.validate_on_submit():
        try:
            editor.update_feature(feature, form.name.data, form.unit_name.data or "unit", form.description.data or "",
                                  actor_id=current_user.id)
        except editor.EditorError as exc:
            db.session.rollback()
            errors = _apply_error(form, exc)
        else:
            flash(f"Saved {feature.name}.", "success")
            return redirect(url_for("staff.features"))
    return _features_page(form, feature, errors, 422 if form.is_submitted() else 200)


def _features_page(form: FeatureForm, editing: Feature | None, errors: list[str], status: int):
    if editing is not None:
        for name in ("code", "type"):
            form[name].render_kw = {**(form[name].render_kw or {}), "disabled": True}
    catalogue = db.session.scalars(sa.select(Feature).order_by(Feature.name)).all()
    used = dict(db.session.execute(
        sa.select(PlanFeature.feature_id, sa.func.count()).group_by(PlanFeature.feature_id)).all())
    return render_template("staff/features.html", form=form, editing=editing, errors=errors, features=catalogue,
                           used=used, type_labels=FEATURE_TYPE_LABELS), status


# --- one plan's settings of one feature, with its tier table -------------------------------------------------------

@bp.route("/plans/<int:plan_id>/features/<int:feature_id>", methods=["GET", "POST"])
@admin_required
def plan_feature(plan_id: int, feature_id: int):
    """What a plan grants of a feature: on/off, limit and window, overage, pricing and its tier table."""
    plan, feature = _plan(plan_id), _feature(feature_id)
    pf = _plan_feature(plan, feature)
    if request.method == "GET":
        form = settings_form(feature, data=settings_data(pf))
        return _feature_page(plan, feature, pf, form)
    action = request.form.get("action", "save")
    if action != "save":  # add or remove a tier row without JavaScript: re-render, save nothing
        form = _rows_changed(feature, action)
        return _feature_page(plan, feature, pf, form)
    form = settings_form(feature)
    if form.validate():
        try:
            saved = editor.set_plan_feature(plan, feature, settings_of(form), actor_id=current_user.id)
        except editor.EditorError as exc:
            db.session.rollback()
            plan, feature = _plan(plan_id), _feature(feature_id)
            in_tiers = exc.field == "tiers"
            return _feature_page(plan, feature, _plan_feature(plan, feature), form,
                                 errors=[] if in_tiers else _apply_error(form, exc),
                                 tier_error=str(exc) if in_tiers else None, bad_tier=exc.tier, status=422)
        flash(f"Saved {feature.name} on {plan.name}{_reach(plan)}.", "success")
        return redirect(url_for("staff.plan_edit", plan_id=plan.id, _anchor=f"feature-{saved.feature.code}"))
    return _feature_page(plan, feature, pf, form, errors=["Some settings could not be read; see the marked fields."],
                         status=422)


def _reach(plan: Plan) -> str:
    count = editor.live_subscribers(plan.id)
    if not count:
        return ""
    return (f": {display.units(count, 'subscriber')} get the new limits now, and its prices on the invoice of "
            "their next renewal")


def _rows_changed(feature: Feature, action: str) -> FlaskForm:
    rows = tier_rows(request.form)
    if action == "add-tier":
        rows.append(next_row(rows))
    elif action.startswith("remove-tier-") and action.removeprefix("remove-tier-").isdigit():
        index = int(action.removeprefix("remove-tier-"))
        if 0 <= index < len(rows) and len(rows) > 1:
            rows.pop(index)
    return settings_form(feature, formdata=with_rows(request.form, rows))


def _feature_page(plan: Plan, feature: Feature, pf: PlanFeature | None, form, *, errors: list[str] | None = None,
                  tier_error: str | None = None, bad_tier: int | None = None, status: int = 200):
    return _render(
        "staff/plan_edit.html", section="feature", plan=plan, feature=feature, pf=pf, form=form,
        errors=errors or [], tier_error=tier_error, bad_tier=bad_tier, subscribers=editor.live_subscribers(plan.id),
        type_label=FEATURE_TYPE_LABELS[feature.type], unit_label=display.plural(feature.unit_name),
        card=_card(plan), estimate=None,
    ), status


@bp.post("/plans/<int:plan_id>/features/<int:feature_id>/tiers/add")
@admin_required
def plan_feature_tier_add(plan_id: int, feature_id: int):
    """The tier table with one more row (htmx; saves nothing: the settings form's Save does)."""
    return _tier_table(plan_id, feature_id, "add-tier")


@bp.post("/plans/<int:plan_id>/features/<int:feature_id>/tiers/remove")
@admin_required
def plan_feature_tier_remove(plan_id: int, feature_id: int):
    """The tier table without the row `index` (htmx; saves nothing)."""
    return _tier_table(plan_id, feature_id, f"remove-tier-{request.form.get('index', '')}")


def _tier_table(plan_id: int, feature_id: int, action: str):
    plan, feature = _plan(plan_id), _feature(feature_id)
    if feature.type not in (FeatureType.QUOTA, FeatureType.USAGE):
        abort(404)
    form = _rows_changed(feature, action)
    response = render_template("staff/_plan_tiers.html", form=form, plan=plan, feature=feature)
    # The preview listens for this: a row added or removed changes the price as much as typing does.
    return response, 200, {"HX-Trigger": "tiers-changed"}


@bp.get("/plans/<int:plan_id>/features/<int:feature_id>/preview")
@admin_required
def plan_feature_preview(plan_id: int, feature_id: int):
    """The plan card and the price of the sample use with the settings as typed (htmx partial; saves nothing)."""
    plan, feature = _plan(plan_id), _feature(feature_id)
    form = settings_form(feature, formdata=request.args, csrf=False)
    return _render("staff/_plan_preview.html", **_preview(plan, feature, form))


def _preview(plan: Plan, feature: Feature, form) -> dict:
    """The preview's context: the card and the sample's price, or what stops the settings from being valid."""
    if not form.validate():
        return {"card": None, "errors": _error_list(form), "estimate": None}
    try:
        settings = editor.check_settings(feature, settings_of(form))
    except editor.EditorError as exc:
        return {"card": None, "errors": [str(exc)], "estimate": None}
    card = _card(editor.preview_plan(plan, feature=feature, settings=settings))
    sample = form.sample.data
    estimate = estimate_plan(card.terms, {feature.code: sample}) if sample else None
    return {"card": card, "errors": [], "estimate": estimate}
