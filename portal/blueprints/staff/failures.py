"""Errors & retries: unresolved failures, filterable, the failed report, one failure's timeline, actions.

Every action goes through the retry processor's staff functions (what `flask failures ...` calls) and
writes one audit row per failure acted on, with the CLI's action names. With htmx an action answers the
partial it changed (the row, the detail, or the bulk summary with the rows touched); without it, a
redirect back with a flash message. A refusal (a closed failure, one being tried this moment) answers
409 and a missing note 422, writing nothing.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.routing import BuildError
from wtforms import HiddenField, SelectField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from portal.blueprints.staff import bp
from portal.clock import now
from portal.display import time_until
from portal.extensions import db, htmx
from portal.models import ErrorStatus, OperationError, RetryOutcome, RetryStrategy
from portal.services import retries
from portal.services.audit import audit
from portal.services.retries import processor, views
from portal.services.retries.report import failed_report

STRATEGY_LABELS = {
    RetryStrategy.EXPONENTIAL.value: "Exponential backoff",
    RetryStrategy.IMMEDIATE.value: "Immediate",
    RetryStrategy.FIXED_INTERVAL.value: "Fixed interval",
    RetryStrategy.MANUAL.value: "Manual (a person)",
}
STATUS_LABELS = {
    "unresolved": "Unresolved",
    ErrorStatus.PENDING.value: "Pending",
    ErrorStatus.RETRYING.value: "Retrying now",
    ErrorStatus.MANUAL.value: "Needs a person",
    ErrorStatus.RESOLVED.value: "Resolved",
    ErrorStatus.GAVE_UP.value: "Gave up",
    "any": "Any",
}
AGE_CHOICES = (("", "Any age"), ("1h", "Older than 1 hour"), ("1d", "Older than 1 day"),
               ("3d", "Older than 3 days"), ("7d", "Older than 7 days"), ("30d", "Older than 30 days"))
BULK_ACTIONS = {"retry": "Retry now", "strategy": "Switch strategy", "resolve": "Resolve", "give-up": "Give up"}
#: Failures one bulk action may touch: a page's worth (a retry asks Stripe, one after the other).
BULK_MAX = views.PAGE_SIZE
NOTE_REQUIRED = "Say why in a note: it is kept with the failure."


class ActionForm(FlaskForm):
    """What every action form carries: where it was sent from."""

    #: "row" when sent from a row of the list (htmx answers the row), else the detail page.
    view = HiddenField()
    #: Where to go back to without htmx (a /staff/failures address).
    next = HiddenField()


class StrategyForm(ActionForm):
    strategy = SelectField("Strategy", choices=[SelectChoice(v, label) for v, label in STRATEGY_LABELS.items()],
                           validators=[DataRequired("Choose a strategy.")])


class NoteForm(ActionForm):
    note = TextAreaField("Note", filters=[lambda v: v.strip() if isinstance(v, str) else v],
                         validators=[DataRequired(NOTE_REQUIRED), Length(max=2000)])


class BulkForm(FlaskForm):
    action = SelectField("Action", choices=[SelectChoice(v, label) for v, label in BULK_ACTIONS.items()],
                         validators=[DataRequired("Choose what to do.")])
    strategy = SelectField("Strategy", validate_choice=False, choices=[
        SelectChoice("", "—"), *(SelectChoice(v, label) for v, label in STRATEGY_LABELS.items())])
    note = TextAreaField("Note", filters=[lambda v: v.strip() if isinstance(v, str) else v],
                         validators=[Length(max=2000)])


def _customer_url(user_id: int | None) -> str | None:
    """The staff page of a customer, once that page exists."""
    if user_id is None:
        return None
    try:
        return url_for("staff.customer", user_id=user_id)
    except BuildError:
        return None


def _ago(value) -> str:
    """How long ago, short: "3 d 2 h", "45 min"."""
    if value is None:
        return "—"
    delta = now() - value
    return "<1 min" if delta.total_seconds() < 60 else time_until(delta)


def _until(value) -> str:
    """When a time comes, short: "in 5 h", "2 min overdue"."""
    if value is None:
        return ""
    at = now()
    return f"in {time_until(value - at)}" if value >= at else f"{time_until(at - value)} overdue"


def _common() -> dict[str, Any]:
    return {"strategy_labels": STRATEGY_LABELS, "status_labels": STATUS_LABELS, "ago": _ago, "until": _until,
            "customer_url": _customer_url, "bulk_actions": BULK_ACTIONS}


def _safe_next(target: str | None) -> str | None:
    prefix = url_for("staff.failures")
    if target and target.startswith(prefix) and not target.startswith("//") and "\\" not in target:
        return target
    return None


def _list_context(filters: views.Filters, after: views.Cursor | None) -> dict[str, Any]:
    page = views.failures_page(filters, after=after)
    report = failed_report()
    types = views.operation_types(tuple(row.operation_type for row in report.rows)
                                  + ((filters.operation_type,) if filters.operation_type else ()))
    return {"page": page, "report": report, "filters": filters, "types": types, "age_choices": AGE_CHOICES,
            "first_url": url_for("staff.failures", **filters.args()) if after else None,
            "next_url": url_for("staff.failures", **filters.args(), **page.next.args()) if page.next else None,
            "bulk_url": url_for("staff.failures_bulk", **filters.args(), **(after.args() if after else {})),
            "here": url_for("staff.failures", **filters.args(), **(after.args() if after else {})), **_common()}


def _filters() -> tuple[views.Filters, views.Cursor | None]:
    try:
        return views.Filters.parse(request.args), views.Cursor.parse(request.args.get("after"),
                                                                   request.args.get("after_at"))
    except views.BadFilter as exc:
        abort(400, str(exc))


@bp.get("/failures")
def failures():
    """Every unresolved failure (or those the filters ask for), soonest next retry first, with the failed report."""
    filters, after = _filters()
    return render_template("staff/failures.html", bulk_form=BulkForm(formdata=None), bulk_errors=[],
                           **_list_context(filters, after))


@bp.get("/failures/<int:error_id>")
def failure(error_id: int):
    """One failure: context, every attempt as a timeline, the subscription's history, the invoice at stake."""
    return _detail_page(error_id)


def _detail_page(error_id: int, *, errors: dict[str, list[str]] | None = None, values: dict[str, str] | None = None,
                 status: int = 200):
    detail = views.failure_detail(error_id)
    if detail is None:
        abort(404)
    return render_template("staff/failure.html", d=detail, errors=errors or {}, values=values or {},
                           result=None, **_common()), status


def _open_or_404(error_id: int) -> OperationError:
    error = db.session.get(OperationError, error_id)
    if error is None:
        abort(404)
    return error


@dataclass(frozen=True)
class Done:
    """What an action did to one failure: shown in place, flashed, counted in a bulk summary."""

    ok: bool
    #: The short label a bulk summary counts ("resolved", "skipped: being retried").
    label: str
    message: str
    #: The few words shown in a row of the list (the label when empty).
    short: str = ""

    @property
    def in_row(self) -> str:
        return self.short or self.label[:1].upper() + self.label[1:]


def _short_when(at) -> str:
    return f"{at:%d %b, %H:%M}"


def _refusal(error: OperationError) -> Done:
    db.session.refresh(error)
    if error.status in retries.CLOSED:
        state = "resolved" if error.status is ErrorStatus.RESOLVED else "given up"
        return Done(False, "skipped: already closed", f"Failure #{error.id} is already {state}: nothing was done.",
                    f"Skipped: already {state}")
    return Done(False, "skipped: being retried",
                f"Failure #{error.id} is being retried right now: nothing was done. Look again in a moment.")


def _retry(error: OperationError, actor_id: int, *, bulk: bool = False) -> Done:
    error_id = error.id
    try:
        outcome = processor.retry_now(error_id, actor_id=actor_id)  # commits: the claim, then the try
    except processor.NotRetryable:
        return _refusal(error)
    error = db.session.get(OperationError, error_id, populate_existing=True)
    audit("failure.retry", error, actor_id=actor_id,
          data={"outcome": outcome.value, **({"bulk": True} if bulk else {})})
    when = f"{error.next_retry_at:%d %b %Y, %H:%M} UTC" if error.next_retry_at else None
    if outcome in (RetryOutcome.SUCCEEDED, RetryOutcome.MOOT) or error.status is ErrorStatus.RESOLVED:
        extra = " (nothing was left to do)" if outcome is RetryOutcome.MOOT else ""
        return Done(True, "resolved", f"Retried #{error_id}: it went through{extra}. Resolved.",
                    "Resolved by the retry")
    if outcome is RetryOutcome.WAITING:
        return Done(True, "waiting for an answer",
                    f"Retried #{error_id}: no answer yet; asked again {('on ' + when) if when else 'later'}.",
                    "No answer yet" + (f"; asked again {_short_when(error.next_retry_at)}" if when else ""))
    then = f"next try on {when}" if when else "no more automatic tries: it waits for a person"
    return Done(False, "failed again", f"Retried #{error_id}: it failed again ({error.error_code}: "
                                       f"{error.message}); {then}.",
                f"Failed again ({error.error_code}); "
                + (f"next try {_short_when(error.next_retry_at)}" if when else "waits for a person"))


def _switch(error: OperationError, strategy: RetryStrategy, actor_id: int, *, bulk: bool = False) -> Done:
    before = error.strategy.value
    try:
        processor.switch_strategy(error, strategy, actor_id=actor_id)
    except processor.NotRetryable:
        return _refusal(error)
    audit("failure.strategy", error, actor_id=actor_id,
          data={"from": before, "to": strategy.value, **({"bulk": True} if bulk else {})})
    label = STRATEGY_LABELS[strategy.value].lower()
    then = (f"next try on {error.next_retry_at:%d %b %Y, %H:%M} UTC" if error.next_retry_at
            else "no automatic tries: it waits for a person")
    return Done(True, f"switched to {label}", f"#{error.id} now retries by {label}; {then}.",
                f"Now {label}" + (f"; next try {_short_when(error.next_retry_at)}" if error.next_retry_at else ""))


def _close(error: OperationError, action: str, note: str, actor_id: int, *, bulk: bool = False) -> Done:
    status = ErrorStatus.RESOLVED if action == "resolve" else ErrorStatus.GAVE_UP
    try:
        processor.close(error, status, actor_id=actor_id, note=note)
    except processor.NotRetryable:
        return _refusal(error)
    audit(f"failure.{action}", error, actor_id=actor_id, data={"note": note, **({"bulk": True} if bulk else {})})
    label = "resolved" if action == "resolve" else "given up"
    return Done(True, label, f"#{error.id} is {label}. Nothing will retry it.")


def _answer(error_id: int, form: ActionForm, done: Done, *, status: int | None = None):
    """The answer to a single action: the partial it changed (htmx), else back with a flash message."""
    status = status or (200 if done.ok or not done.label.startswith("skipped") else 409)
    category = "success" if done.ok else ("error" if status >= 400 else "warning")
    if htmx:
        if form.view.data == "row":
            rows = views.rows_by_id([error_id])
            return render_template("staff/_failure_row_answer.html", row=rows[0], result=done, category=category,
                                   report=failed_report(), **_common()), status
        return render_template("staff/_failure_detail.html", d=views.failure_detail(error_id), errors={}, values={},
                               result=done, category=category, **_common()), status
    flash(done.message, category)
    return redirect(_safe_next(form.next.data) or url_for("staff.failure", error_id=error_id), code=303)


def _invalid(error_id: int, form: ActionForm, action: str, errors: list[str], values: dict[str, str]):
    """A form error: nothing was written; the form shown again with what was wrong (422)."""
    if htmx and form.view.data != "row":
        return render_template("staff/_failure_detail.html", d=views.failure_detail(error_id),
                               errors={action: errors}, values=values, result=None, **_common()), 422
    if htmx:
        return _answer(error_id, form, Done(False, "invalid", " ".join(errors)), status=422)
    return _detail_page(error_id, errors={action: errors}, values=values, status=422)


def _errors(form: FlaskForm) -> list[str]:
    return [message for field_errors in form.errors.values() for message in field_errors]


@bp.post("/failures/<int:error_id>/retry")
def failure_retry(error_id: int):
    """Try it once more now, whatever its schedule."""
    error = _open_or_404(error_id)
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    return _answer(error_id, form, _retry(error, current_user.id))


@bp.post("/failures/<int:error_id>/strategy")
def failure_strategy(error_id: int):
    """Retry it by another strategy from now on (manual stops the automatic tries)."""
    error = _open_or_404(error_id)
    form = StrategyForm()
    if not form.validate_on_submit():
        return _invalid(error_id, form, "strategy", _errors(form), {})
    return _answer(error_id, form, _switch(error, RetryStrategy(form.strategy.data), current_user.id))


def _close_view(error_id: int, action: str):
    error = _open_or_404(error_id)
    form = NoteForm()
    if not form.validate_on_submit():
        return _invalid(error_id, form, action, _errors(form), {"note": form.note.data or ""})
    return _answer(error_id, form, _close(error, action, form.note.data, current_user.id))


@bp.post("/failures/<int:error_id>/resolve")
def failure_resolve(error_id: int):
    """Close it as resolved (fixed another way), with a note."""
    return _close_view(error_id, "resolve")


@bp.post("/failures/<int:error_id>/give-up")
def failure_give_up(error_id: int):
    """Close it as given up (nothing more will be tried), with a note."""
    return _close_view(error_id, "give-up")


def _selected_ids() -> tuple[list[int], list[str]]:
    raw = request.form.getlist("ids")
    ids: list[int] = []
    for value in raw:
        try:
            number = int(value)
        except ValueError:
            return [], ["Unknown failure in the selection."]
        if number not in ids:
            ids.append(number)
    if not ids:
        return [], ["Select at least one failure."]
    if len(ids) > BULK_MAX:
        return [], [f"Select at most {BULK_MAX} failures at a time."]
    return ids, []


def _summary(results: list[Done], missing: int) -> str:
    counts = Counter(done.label for done in results)
    parts = [f"{n} {label}" for label, n in counts.items()]
    if missing:
        parts.append(f"{missing} not found")
    return ", ".join(parts) + "."


@bp.post("/failures/bulk")
def failures_bulk():
    """One action on the selected failures, each reported: "3 resolved, 1 skipped: being retried"."""
    filters, after = _filters()
    form = BulkForm()
    ids, problems = _selected_ids()
    if form.validate_on_submit():
        if form.action.data == "strategy" and form.strategy.data not in STRATEGY_LABELS:
            problems.append("Choose the strategy to switch to.")
        if form.action.data in ("resolve", "give-up") and not form.note.data:
            problems.append(NOTE_REQUIRED)
    elif form.csrf_token.errors:
        abort(400)
    else:
        problems += _errors(form)
    if problems:
        if htmx:
            return render_template("staff/_failure_bulk_result.html", problems=problems, summary=None, rows=[],
                                   report=None, results={}, **_common()), 422
        return render_template("staff/failures.html", bulk_form=form, bulk_errors=problems,
                               **_list_context(filters, after)), 422
    actor_id = current_user.id
    action = form.action.data
    found = {e.id: e for e in db.session.scalars(
        sa.select(OperationError).where(OperationError.id.in_(ids)).order_by(OperationError.id))}
    results: dict[int, Done] = {}
    for error_id in ids:
        error = found.get(error_id)
        if error is None:
            continue
        if action == "retry":
            results[error_id] = _retry(error, actor_id, bulk=True)
        elif action == "strategy":
            results[error_id] = _switch(error, RetryStrategy(form.strategy.data), actor_id, bulk=True)
        else:
            results[error_id] = _close(error, action, form.note.data, actor_id, bulk=True)
    summary = f"{BULK_ACTIONS[action]}: " + _summary(list(results.values()), len(ids) - len(results))
    if htmx:
        return render_template("staff/_failure_bulk_result.html", problems=[], summary=summary,
                               rows=views.rows_by_id(list(results)), results=results, report=failed_report(),
                               **_common())
    flash(summary, "success" if all(done.ok for done in results.values()) and results else "warning")
    return redirect(url_for("staff.failures", **filters.args(), **(after.args() if after else {})), code=303)


