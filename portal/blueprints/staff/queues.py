"""Queues: RQ queue depth and failed jobs, the scheduler's last run, the outbox backlog; requeue and delete."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import abort, flash, make_response, redirect, render_template, url_for
from flask_login import current_user
from redis.exceptions import RedisError

from portal import display
from portal.blueprints.staff import bp
from portal.clock import now
from portal.extensions import htmx
from portal.services import queues_views
from portal.services.audit import audit
from worker import QUEUES

#: What each action does to a failed job, and how the result is worded.
_ACTIONS = {
    "requeue": (queues_views.requeue_failed, "job.requeue", "is back on the “{queue}” queue and will run again"),
    "delete": (queues_views.delete_failed, "job.delete", "is deleted; it will not run again"),
}


def age(value: datetime | None, wall: bool = False) -> str:
    """How long ago `value` was: by the wall clock for RQ's times, by billing time for ours."""
    if value is None:
        return ""
    current = datetime.now(timezone.utc) if wall else now()
    return f"{display.time_until(current - value)} ago"


def _page(notice: tuple[str, str] | None = None, status: int = 200):
    return render_template("staff/queues.html", board=queues_views.board(), notice=notice, age=age), status


@bp.get("/queues")
def queues():
    """Every queue's depth and failed jobs, the scheduler and the periodic jobs, the outbox backlog."""
    return _page()


@bp.post("/queues/<queue>/failed/<job_id>/requeue")
def requeue_job(queue: str, job_id: str):
    """Put a failed job back on its queue (one audit row, job.requeue)."""
    return _act("requeue", queue, job_id)


@bp.post("/queues/<queue>/failed/<job_id>/delete")
def delete_job(queue: str, job_id: str):
    """Delete a failed job for good (one audit row, job.delete)."""
    return _act("delete", queue, job_id)


def _act(action: str, queue: str, job_id: str):
    if queue not in QUEUES:
        abort(404, f"There is no queue named “{queue}”.")
    do, audit_action, done = _ACTIONS[action]
    try:
        func = do(queue, job_id)
    except queues_views.JobActionError as error:
        return _answer(queue, (str(error), "error"), error.status)
    except RedisError as error:
        message = f"Redis is unreachable, so nothing was done ({type(error).__name__}: {error})."
        if htmx:  # the whole page shows what is known without Redis
            flash(message, "error")
            response = make_response("", 503)
            response.headers["HX-Refresh"] = "true"
            return response
        return _page((message, "error"), 503)
    audit(audit_action, queues_views.RQJob(job_id), actor_id=current_user.id, data={"queue": queue, "func": func})
    return _answer(queue, (f"Job {job_id} ({func}) {done.format(queue=queue)}.", "success"), 200)


def _answer(queue: str, notice: tuple[str, str], status: int):
    """The queue's section for htmx (swapped in place), else the whole page (after a redirect when it worked)."""
    if htmx:
        board = queues_views.board()
        if board.redis_error:  # Redis went away since: the whole page says so
            flash(notice[0], notice[1])
            response = make_response("", status)
            response.headers["HX-Refresh"] = "true"
            return response
        state = next(q for q in board.queues if q.name == queue)
        # The queue's section, and the depth table out of band (a requeued job waits on its queue now).
        return render_template("staff/_queues_queue.html", q=state, notice=notice, age=age, board=board,
                               oob=True), status
    if status == 200:
        flash(notice[0], notice[1])
        return redirect(url_for("staff.queues", _anchor=f"queue-{queue}"), code=303)
    return _page(notice, status)
