"""Revenue: MRR, subscriptions by plan, revenue by month, new vs churned, failed payments, CSV."""
from __future__ import annotations

import csv
import io

from flask import make_response, render_template, request

from portal.blueprints.staff import bp
from portal.services import revenue


def _range() -> tuple[revenue.MonthRange | None, str | None]:
    try:
        return revenue.month_range(request.args.get("from") or None, request.args.get("to") or None), None
    except revenue.RangeError as error:
        return None, str(error)


@bp.get("/revenue", endpoint="revenue")
def revenue_page():
    """The figures over a range of months (?from=YYYY-MM&to=YYYY-MM; the last 12 months by default)."""
    months, error = _range()
    if error is not None:
        asked = {"from": request.args.get("from", ""), "to": request.args.get("to", "")}
        return render_template("staff/revenue.html", error=error, report=None, charts={}, asked=asked,
                               mrr=revenue.mrr(), tz=revenue.billing_tz().key, percent=revenue.percent), 400
    result = revenue.report(months)
    return render_template("staff/revenue.html", error=None, report=result, charts=revenue.charts(result),
                           asked={"from": months.first.key, "to": months.last.key}, mrr=result.mrr,
                           tz=months.tz.key, percent=revenue.percent)


@bp.get("/revenue.csv")
def revenue_csv():
    """The monthly table of the same range as CSV (a header row, then one row per month)."""
    months, error = _range()
    if error is not None:
        response = make_response(error + "\n", 400)
        response.mimetype = "text/plain"
        return response
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(revenue.csv_rows(revenue.report(months)))
    response = make_response(buffer.getvalue())
    response.mimetype = "text/csv"
    response.headers["Content-Disposition"] = (
        f'attachment; filename="revenue-{months.first.key}-to-{months.last.key}.csv"')
    return response
