"""The invoice generator proposes a period's usage lines from counters alone (no database)."""
from decimal import Decimal

from portal.billing.estimate import Allowance, PlanTerms
from portal.billing.invoicing import Counted, billed_codes, usage_lines
from portal.billing.pricing import PricingModel, Tier, build_pricing

CALLS = Allowance("api_calls", "API calls", "call", pricing=build_pricing(PricingModel.TIERED, tiers=[
    Tier(1, 10_000, Decimal(0)), Tier(10_001, None, Decimal("0.001"))]))
TOKENS = Allowance("tokens", "AI tokens", "token", included=2000, kind="overage",
                   pricing=build_pricing(PricingModel.FLAT, unit_price=Decimal("0.01")))
PREPAID = Allowance("packs", "Packs", "pack", included=1000, kind="package",
                    pricing=build_pricing(PricingModel.PACKAGE, package_size=500, package_price=Decimal("8")))
SEATS = Allowance("seats", "Seats", "seat", enabled=False)
TERMS = PlanTerms("business", "Business", 4900, "USD", "month", (CALLS, TOKENS, PREPAID, SEATS))


def test_only_features_billed_in_arrears_need_their_counters():
    assert billed_codes(TERMS) == ("api_calls", "tokens")


def test_usage_is_priced_by_its_model_and_overage_beyond_what_is_included():
    lines = usage_lines(TERMS, {"api_calls": Counted(25_000), "tokens": Counted(2600), "packs": Counted(3000)})
    assert [(line.label, line.amount) for line in lines] == [
        ("API calls: 25,000 calls", 1500),
        ("AI tokens: 600 tokens beyond the 2,000 included (overage)", 600),
    ]


def test_prepaid_units_are_spent_before_overage_and_unused_features_give_no_line():
    lines = usage_lines(TERMS, {"tokens": Counted(2400, bonus=500)})  # 1,900 of 2,000 after the prepaid 500
    assert [(line.label, line.amount) for line in lines] == [("AI tokens: 1,900 tokens, within the 2,000 included", 0)]
    within = usage_lines(TERMS, {"api_calls": Counted(9000)})
    assert [(line.label, line.amount) for line in within] == [("API calls: 9,000 calls", 0)]


# --- a renewal's lines ---------------------------------------------------------------------------------

from datetime import datetime, timezone  # noqa: E402

from portal.billing.invoicing import breakdown_data, renewal_lines  # noqa: E402
from portal.billing.periods import Period  # noqa: E402

CLOSING = Period(datetime(2026, 1, 31, 9, tzinfo=timezone.utc), datetime(2026, 2, 28, 9, tzinfo=timezone.utc))
NEXT = Period(datetime(2026, 2, 28, 9, tzinfo=timezone.utc), datetime(2026, 3, 31, 9, tzinfo=timezone.utc))
USED = {"api_calls": Counted(25_000), "tokens": Counted(2600)}
FREE = PlanTerms("free", "Free", 0, "USD", "month", (TOKENS,))
PREMIUM = PlanTerms("premium", "Premium", 999, "USD", "month")


def _shape(lines):
    return [(line.kind, line.description, line.amount, line.quantity, line.feature, line.period) for line in lines]


def test_a_renewal_bills_the_next_fee_in_advance_and_the_closing_use_in_arrears():
    lines = renewal_lines(next_terms=TERMS, next_period=NEXT, closing_terms=TERMS, closing_period=CLOSING,
                          counted=USED)
    assert _shape(lines) == [
        ("plan", "Business plan, 28 Feb 2026 – 31 Mar 2026", 4900, 1, None, NEXT),
        ("usage", "API calls: 25,000 calls", 1500, 25_000, "api_calls", CLOSING),
        ("overage", "AI tokens: 600 tokens beyond the 2,000 included (overage)", 600, 600, "tokens", CLOSING),
    ]
    assert breakdown_data(lines[1].breakdown) == [
        {"description": "Units 1–10,000 × 0.00", "units": 10_000, "unit_price": "0", "flat_fee": "0", "amount": "0"},
        {"description": "Units 10,001–25,000 × 0.001", "units": 15_000, "unit_price": "0.001", "flat_fee": "0",
         "amount": "15.000"},
    ]


def test_a_downgrade_bills_the_new_plans_fee_and_the_old_plans_use():
    lines = renewal_lines(next_terms=PREMIUM, next_period=NEXT, closing_terms=TERMS, closing_period=CLOSING,
                          counted=USED)
    assert [(line.kind, line.amount) for line in lines] == [("plan", 999), ("usage", 1500), ("overage", 600)]


def test_a_trial_ending_bills_the_fee_only_and_an_ending_subscription_its_use_only():
    trial = renewal_lines(next_terms=TERMS, next_period=NEXT, closing_terms=None, closing_period=CLOSING,
                          counted=USED)
    assert [(line.kind, line.amount) for line in trial] == [("plan", 4900)]
    ending = renewal_lines(next_terms=None, next_period=None, closing_terms=TERMS, closing_period=CLOSING,
                           counted=USED)
    assert [(line.kind, line.amount) for line in ending] == [("usage", 1500), ("overage", 600)]


def test_a_free_plan_has_no_fee_line_and_use_within_its_allowance_costs_nothing():
    lines = renewal_lines(next_terms=FREE, next_period=NEXT, closing_terms=FREE, closing_period=CLOSING,
                          counted={"tokens": Counted(1500)})
    assert [(line.kind, line.amount) for line in lines] == [("overage", 0)]  # the renewal issues no invoice for 0
    assert renewal_lines(next_terms=FREE, next_period=NEXT, closing_terms=FREE, closing_period=CLOSING,
                         counted={}) == ()
