"""Pricing models: the seed examples exactly, tier validation, and properties over random tables."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.billing.pricing import (
    PRICING_MODELS,
    BreakdownLine,
    FlatPricing,
    PackagePricing,
    PriceResult,
    PricingConfigError,
    PricingModel,
    Tier,
    TieredPricing,
    TierTableError,
    VolumePricing,
    build_pricing,
    validate_tiers,
)

D = Decimal

# The seed documents' tables, in both conventions.
API_CALLS_1 = [Tier(1, 100, D("10")), Tier(101, 300, D("8")), Tier(301, None, D("6"))]
API_CALLS_0 = [Tier(0, 100, D("10")), Tier(100, 300, D("8")), Tier(300, None, D("6"))]
SEATS_1 = [Tier(1, 100, D("10")), Tier(101, 500, D("8")), Tier(501, None, D("6"))]
SEATS_0 = [Tier(0, 100, D("10")), Tier(100, 500, D("8")), Tier(500, None, D("6"))]


def assert_consistent(result: PriceResult) -> None:
    assert result.total == sum((line.amount for line in result.lines), D(0))
    for line in result.lines:
        assert line.amount == line.units * line.unit_price + line.flat_fee


# --- seed examples -----------------------------------------------------------------------


def test_flat_seed_example():
    result = FlatPricing(D("0.05")).price(1_000)
    assert result.total == D("50")
    assert result.amount_minor("USD") == 5000
    assert result.lines == (BreakdownLine("1,000 units × 0.05", 1000, D("0.05"), D(0), D("50.00")),)


def test_flat_beyond_threshold():
    pricing = FlatPricing(D("0.05"), free_units=1_000)
    assert pricing.price(999).total == 0 and pricing.price(999).lines == ()
    assert pricing.price(1_000).lines == ()
    result = pricing.price(1_250)
    assert result.amount_minor("USD") == 1250
    assert result.lines[0].units == 250
    assert "beyond 1,000 free" in result.lines[0].description


def test_fractional_unit_price_rounds_once():
    pricing = FlatPricing(D("0.0005"))
    assert pricing.price(3).total == D("0.0015")
    assert pricing.price(3).amount_minor("USD") == 0
    assert pricing.price(10).amount_minor("USD") == 1  # 0.005 rounds half-up
    assert pricing.price(1_000_001).amount_minor("USD") == 50000  # 500.0005
    assert pricing.price(10**15).total == D("500000000000")


@pytest.mark.parametrize("tiers", [API_CALLS_1, API_CALLS_0])
def test_tiered_seed_example(tiers):
    result = TieredPricing(tiers).price(250)
    assert result.total == D("2200")
    assert result.amount_minor("USD") == 220000
    assert [(line.units, line.unit_price, line.amount) for line in result.lines] == [
        (100, D("10"), D("1000")),
        (150, D("8"), D("1200")),
    ]
    assert [line.description for line in result.lines] == ["Units 1–100 × 10.00", "Units 101–250 × 8.00"]


def test_tiered_reaches_the_open_tier():
    result = TieredPricing(API_CALLS_1).price(301)
    assert result.total == D("1000") + D("1600") + D("6")
    assert len(result.lines) == 3


def test_tiered_flat_fee_charged_once_per_touched_tier():
    tiers = [Tier(1, 10, D("1"), D("5")), Tier(11, None, D("0.5"), D("20"))]
    assert TieredPricing(tiers).price(0).total == 0
    assert TieredPricing(tiers).price(1).total == D("6")
    assert TieredPricing(tiers).price(10).total == D("15")
    assert TieredPricing(tiers).price(11).total == D("15") + D("20.5")
    assert TieredPricing(tiers).price(11).lines[1].description == "Units 11–11 × 0.50 + 20.00 flat fee"


@pytest.mark.parametrize("tiers", [SEATS_1, SEATS_0])
def test_volume_seed_example(tiers):
    result = VolumePricing(tiers).price(150)
    assert result.total == D("1200")
    assert result.amount_minor("USD") == 120000
    assert len(result.lines) == 1 and result.lines[0].unit_price == D("8")


def test_volume_boundaries_and_zero():
    pricing = VolumePricing(SEATS_1)
    assert pricing.price(100).total == D("1000")
    assert pricing.price(101).total == D("808")
    assert pricing.price(501).total == D("3006")
    # Zero reaches no tier: nothing to charge, no lines (documented choice).
    assert pricing.price(0) == PriceResult(D(0), ())


def test_volume_flat_fee():
    pricing = VolumePricing([Tier(1, 10, D("2"), D("1")), Tier(11, None, D("1"), D("3"))])
    assert pricing.price(10).total == D("21")
    assert pricing.price(11).total == D("14")


def test_package_seed_example():
    pricing = PackagePricing(500, D("20"))
    result = pricing.price(1_001)
    assert result.total == D("60")
    assert result.amount_minor("USD") == 6000
    assert pricing.packages_for(1_001) == 3
    assert pricing.packages_for(1_000) == 2
    assert pricing.packages_for(1) == 1
    assert pricing.packages_for(0) == 0
    assert result.lines[0].units == 3 and result.lines[0].unit_price == D("20")
    assert result.lines[0].description == "3 packages of 500 units × 20.00 (1,001 units)"


def test_package_free_units():
    pricing = PackagePricing(500, D("20"), free_units=100)
    assert pricing.price(100).lines == ()
    assert pricing.price(101).total == D("20")
    assert pricing.price(601).total == D("40")


@pytest.mark.parametrize("bad", [-1, 1.0, True, "3", None])
@pytest.mark.parametrize(
    "pricing",
    [FlatPricing(D("1")), TieredPricing(API_CALLS_1), VolumePricing(SEATS_1), PackagePricing(10, D("1"))],
)
def test_quantity_must_be_a_non_negative_int(pricing, bad):
    with pytest.raises(ValueError, match="quantity"):
        pricing.price(bad)


# --- constructors and the registry ---------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: FlatPricing(0.05), "float"),
        (lambda: FlatPricing(D("-1")), "unit_price must be >= 0"),
        (lambda: FlatPricing(D("NaN")), "finite"),
        (lambda: FlatPricing("abc"), "not a number"),
        (lambda: FlatPricing(D(1), free_units=-1), "free_units must be >= 0"),
        (lambda: PackagePricing(0, D(20)), "package_size must be >= 1"),
        (lambda: PackagePricing(500, 20.0), "float"),
        (lambda: TieredPricing([]), "empty"),
    ],
)
def test_constructors_validate(factory, message):
    with pytest.raises(PricingConfigError, match=message):
        factory()


def test_registry_builds_from_stored_config():
    assert set(PRICING_MODELS) == set(PricingModel)
    assert build_pricing("flat", unit_price="0.05").price(1000).amount_minor("USD") == 5000
    stored_tiers = [t.to_config() for t in API_CALLS_0]
    assert build_pricing(PricingModel.TIERED, tiers=stored_tiers).price(250).total == D("2200")
    assert build_pricing("volume", tiers=SEATS_1).price(150).total == D("1200")
    assert build_pricing("package", package_size=500, package_price="20").price(1001).total == D("60")
    for pricing in [FlatPricing(D("0.0005"), 10), TieredPricing(API_CALLS_1), PackagePricing(5, D(1), 2)]:
        assert build_pricing(pricing.model, **pricing.to_config()) == pricing


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        ("bogus", {}, "unknown pricing model"),
        ("flat", {"unit_price": "1", "tiers": []}, "flat pricing does not take tiers"),
        ("package", {"package_size": 5}, "package pricing needs package_price"),
        ("tiered", {"tiers": [{"first_unit": 1, "unit_price": "1"}]}, r"tier 1: missing \['last_unit'\]"),
    ],
)
def test_registry_errors(model, params, message):
    with pytest.raises(PricingConfigError, match=message):
        build_pricing(model, **params)


# --- tier validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([], "the tier table is empty"),
        ([Tier(2, None, D(1))], "tier 1: the first tier must start at 0 or 1, not 2"),
        ([Tier(1, 100, D(1)), Tier(102, None, D(1))], "tier 2: gap after tier 1: it must start at 101, not 102 (unit 101 would"),
        ([Tier(0, 100, D(1)), Tier(105, None, D(1))], "tier 2: gap after tier 1: it must start at 100, not 105 (units 101–105"),
        ([Tier(1, 100, D(1)), Tier(100, None, D(1))], "tier 2: overlaps tier 1: it must start at 101, not 100"),
        ([Tier(0, 100, D(1)), Tier(101, None, D(1))], "tier 2: gap after tier 1"),  # mixed conventions
        ([Tier(1, None, D(1)), Tier(2, None, D(1))], "tier 1: only the last tier may be open-ended"),
        ([Tier(1, 10, D(1)), Tier(11, 20, D(1))], "tier 2: the last tier must be open-ended"),
        ([Tier(0, 0, D(1)), Tier(0, None, D(1))], "tier 1: last_unit 0 must be greater than first_unit 0"),
        ([Tier(1, 10, D(1)), Tier(11, 5, D(1)), Tier(6, None, D(1))], "tier 2: last_unit 5 must not be below"),
        ([Tier(1, 10, D(1)), Tier(11, None, D(-1))], "tier 2: unit_price must be >= 0"),
        ([Tier(1, 10, D(1), D("-0.01")), Tier(11, None, D(1))], "tier 1: flat_fee must be >= 0"),
        ([Tier(1, 10, 1.5), Tier(11, None, D(1))], "tier 1: unit_price must be a Decimal, int or str, not float"),
    ],
)
def test_validate_tiers_examples(tiers, message):
    with pytest.raises(TierTableError) as info:
        validate_tiers(tiers)
    assert str(info.value).startswith(message)


def test_single_tier_tables_are_valid():
    validate_tiers([Tier(0, None, D(1))])
    validate_tiers([Tier(1, None, D(1))])
    validate_tiers([Tier(1, 1, D(1)), Tier(2, None, D(0))])  # a one-unit 1-based tier


prices = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def tier_tables(draw, zero_based=None):
    """A valid tier table: 1–6 tiers, random widths, prices and fees, in either convention."""
    if zero_based is None:
        zero_based = draw(st.booleans())
    widths = draw(st.lists(st.integers(min_value=1, max_value=200), max_size=5))
    return _build_table(zero_based, widths, draw(st.lists(prices, min_size=6, max_size=6)),
                        draw(st.lists(prices, min_size=6, max_size=6)))


def _build_table(zero_based, widths, unit_prices, fees):
    tiers, start = [], 0 if zero_based else 1
    for i, width in enumerate(widths):
        last = start + width if zero_based else start + width - 1
        tiers.append(Tier(start, last, unit_prices[i], fees[i]))
        start = last if zero_based else last + 1
    tiers.append(Tier(start, None, unit_prices[len(widths)], fees[len(widths)]))
    return tiers


quantities = st.integers(min_value=0, max_value=2_000)


@given(tier_tables(), quantities, st.integers(min_value=0, max_value=500))
def test_graduated_total_never_decreases(tiers, quantity, more):
    pricing = TieredPricing(tiers)
    assert pricing.price(quantity).total <= pricing.price(quantity + more).total


@given(tier_tables(), quantities)
def test_totals_equal_the_sum_of_lines(tiers, quantity):
    assert_consistent(TieredPricing(tiers).price(quantity))
    assert_consistent(VolumePricing(tiers).price(quantity))


@given(tier_tables(), st.integers(min_value=0, max_value=400))
def test_graduated_matches_unit_by_unit_reference(tiers, quantity):
    # Price each unit by the tier that covers it; a touched tier adds its fee once.
    zero_based = tiers[0].first_unit == 0
    expected, touched = D(0), set()
    for unit in range(1, quantity + 1):
        for i, tier in enumerate(tiers):
            low = tier.first_unit + 1 if zero_based else tier.first_unit
            if low <= unit and (tier.last_unit is None or unit <= tier.last_unit):
                expected += tier.unit_price
                touched.add(i)
                break
    expected += sum((tiers[i].flat_fee for i in touched), D(0))
    assert TieredPricing(tiers).price(quantity).total == expected
    assert len(TieredPricing(tiers).price(quantity).lines) == len(touched)


@given(
    st.lists(st.integers(min_value=1, max_value=200), max_size=5),
    st.lists(prices, min_size=6, max_size=6),
    st.lists(prices, min_size=6, max_size=6),
    quantities,
)
def test_both_conventions_price_identically(widths, unit_prices, fees, quantity):
    one_based = _build_table(False, widths, unit_prices, fees)
    zero_based = _build_table(True, widths, unit_prices, fees)
    assert TieredPricing(one_based).price(quantity) == TieredPricing(zero_based).price(quantity)
    assert VolumePricing(one_based).price(quantity) == VolumePricing(zero_based).price(quantity)


@given(tier_tables(), st.integers(min_value=1, max_value=2_000))
def test_volume_uses_the_reached_tier_for_all_units(tiers, quantity):
    result = VolumePricing(tiers).price(quantity)
    (line,) = result.lines
    zero_based = tiers[0].first_unit == 0
    reached = next(t for t in tiers if t.last_unit is None or quantity <= t.last_unit)
    low = reached.first_unit + 1 if zero_based else reached.first_unit
    assert low <= quantity
    assert result.total == quantity * reached.unit_price + reached.flat_fee == line.amount


@given(
    st.integers(min_value=1, max_value=1_000),
    prices,
    st.integers(min_value=0, max_value=1_000),
    st.integers(min_value=0, max_value=10_000),
)
def test_package_properties(size, price, free, quantity):
    pricing = PackagePricing(size, price, free)
    result = pricing.price(quantity)
    assert_consistent(result)
    packages = pricing.packages_for(quantity)
    billable = max(0, quantity - free)
    assert packages * size >= billable > (packages - 1) * size or packages == billable == 0
    assert result.total == packages * price


@given(prices, st.integers(min_value=0, max_value=1_000), quantities)
def test_flat_properties(price, free, quantity):
    result = FlatPricing(price, free).price(quantity)
    assert_consistent(result)
    assert result.total == max(0, quantity - free) * price


DEFECTS = ["gap", "overlap", "open_middle", "closed_last", "bad_start", "negative_price", "inverted"]


@st.composite
def broken_tables(draw):
    """A table with exactly one defect, and the 1-based position of the tier to blame."""
    zero_based = draw(st.booleans())
    widths = draw(st.lists(st.integers(min_value=2, max_value=200), min_size=1, max_size=5))
    tiers = _build_table(zero_based, widths, [D(1)] * 6, [D(0)] * 6)
    defect = draw(st.sampled_from(DEFECTS))
    k = len(tiers)
    if defect == "gap":
        j = draw(st.integers(min_value=2, max_value=k))
        t = tiers[j - 1]
        tiers[j - 1] = Tier(t.first_unit + draw(st.integers(1, 50)), t.last_unit and t.last_unit + 100, D(1))
        return tiers, j, "gap after tier"
    if defect == "overlap":
        j = draw(st.integers(min_value=2, max_value=k))
        t = tiers[j - 1]
        tiers[j - 1] = Tier(t.first_unit - draw(st.integers(1, 50)), t.last_unit, D(1))
        return tiers, j, "overlaps tier"
    if defect == "open_middle":
        j = draw(st.integers(min_value=1, max_value=k - 1))
        tiers[j - 1] = Tier(tiers[j - 1].first_unit, None, D(1))
        return tiers, j, "only the last tier may be open-ended"
    if defect == "closed_last":
        t = tiers[-1]
        tiers[-1] = Tier(t.first_unit, t.first_unit + draw(st.integers(1, 50)), D(1))
        return tiers, k, "the last tier must be open-ended"
    if defect == "bad_start":
        start = draw(st.integers(min_value=-50, max_value=50).filter(lambda s: s not in (0, 1)))
        tiers[0] = Tier(start, tiers[0].last_unit, D(1))
        return tiers, 1, "the first tier must start at 0 or 1"
    if defect == "negative_price":
        j = draw(st.integers(min_value=1, max_value=k))
        t = tiers[j - 1]
        field = draw(st.sampled_from(["unit_price", "flat_fee"]))
        bad = -draw(st.decimals(min_value=D("0.0001"), max_value=100, places=4))
        tiers[j - 1] = Tier(t.first_unit, t.last_unit, **{"unit_price": D(1), "flat_fee": D(0), field: bad})
        return tiers, j, f"{field} must be >= 0"
    # inverted: a closed tier that ends before it starts; tiers are checked in order, so the
    # ones after it do not matter.
    j = draw(st.integers(min_value=1, max_value=k - 1))
    t = tiers[j - 1]
    below = draw(st.integers(min_value=0, max_value=5))
    tiers[j - 1] = Tier(t.first_unit, t.first_unit - below - (0 if zero_based else 1), D(1))
    return tiers, j, "last_unit"


@given(broken_tables())
def test_invalid_tables_name_the_right_tier(case):
    tiers, position, message = case
    with pytest.raises(TierTableError) as info:
        validate_tiers(tiers)
    assert str(info.value).startswith(f"tier {position}: ")
    assert message in str(info.value)
    with pytest.raises(TierTableError):
        TieredPricing(tiers)
    with pytest.raises(TierTableError):
        VolumePricing(tiers)
