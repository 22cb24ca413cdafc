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
