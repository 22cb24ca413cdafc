"""Plans: every public plan side by side, and a price calculator for expected use."""
from __future__ import annotations

from flask import render_template, request
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import IntegerField
from wtforms.validators import NumberRange, Optional
from wtforms.widgets import NumberInput

from portal import display
from portal.blueprints.customer import bp
from portal.extensions import htmx
from portal.services.catalog import views as catalog_views
from portal.services.subscriptions import live_subscription
from portal.services.subscriptions.changes import daily_rate

#: The most units the calculator prices (a billion per period is beyond any plan here).
MAX_UNITS = 1_000_000_000


def estimate_form(inputs: list[catalog_views.CalculatorInput]) -> FlaskForm:
    """A form with one whole-number field per priced feature, read from the query string."""

    class EstimateForm(FlaskForm):
        class Meta:
            csrf = False  # a GET that changes nothing

    for item in inputs:
        setattr(EstimateForm, item.code, IntegerField(
            item.name,
            description=f"{item.unit} per billing period",
            validators=[Optional(), NumberRange(min=0, max=MAX_UNITS,
                                                message=f"Enter a whole number from 0 to {MAX_UNITS:,}.")],
            widget=NumberInput(min=0, step=1),
            render_kw={"inputmode": "numeric", "placeholder": "0"},
        ))
    return EstimateForm(formdata=request.args if request.args else None)


def _calculator():
    """Cards, the calculator form and, when usage was entered and is valid, the estimates."""
    cards = catalog_views.plan_cards(catalog_views.public_plans())
    inputs = catalog_views.calculator_inputs(cards)
    form = estimate_form(inputs)
    submitted = bool(request.args)
    valid = form.validate() if submitted else True
    results = []
    if valid:
        usage = {item.code: form[item.code].data or 0 for item in inputs}
        results = catalog_views.estimates(cards, usage)
    status = 200 if valid else 422
    if not valid:
        for field in form:
            if field.errors and "Not a valid integer value." in field.errors:
                field.errors[:] = ["Enter a whole number, like 1500 (no decimals or letters)."]
    return cards, form, results, submitted, status


def _current() -> dict:
    """The viewer's subscription and its plan's daily rate (to label other plans up or down)."""
    subscription = live_subscription(current_user.id) if current_user.is_authenticated else None
    rate = daily_rate(subscription.plan) if subscription else None
    return {"subscription": subscription, "current_rate": rate, "unit_money": display.unit_money}


@bp.get("/plans")
def plans():
    """Every public plan side by side, with a price calculator."""
    cards, form, results, submitted, status = _calculator()
    return render_template("customer/plans.html", cards=cards, form=form, results=results, submitted=submitted,
                           **_current()), status


@bp.get("/plans/estimate")
def plan_estimate():
    """The calculator's answer: the partial for htmx, the whole plans page otherwise."""
    if not htmx:
        return plans()
    _, form, results, submitted, status = _calculator()
    return render_template("customer/_calculator.html", form=form, results=results, submitted=submitted,
                           **_current()), status
