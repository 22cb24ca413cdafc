"""POST /webhooks/stripe: verify the signature on the raw body, store the event, handle it once."""
from __future__ import annotations

import json

import stripe
from flask import Blueprint, jsonify, request

from portal.extensions import csrf
from portal.payments import gateway
from portal.services import webhooks

bp = Blueprint("webhooks", __name__)
csrf.exempt(bp)  # Stripe signs its requests; it has no session or CSRF token

#: Stripe's events are a few kilobytes; anything far larger is not one.
MAX_BODY = 512 * 1024


def _error(code: str, message: str, status: int):
    return jsonify(error={"code": code, "message": message}), status


@bp.post("/webhooks/stripe")
def stripe_event():
    """Receive one Stripe event: 200 once stored and handled (or already handled), 400 if unsigned."""
    if (request.content_length or 0) > MAX_BODY:
        return _error("payload_too_large", "The body is too large for a Stripe event.", 413)
    raw = request.get_data(cache=False)  # the exact bytes Stripe signed
    try:
        gateway.construct_event(raw, request.headers.get("Stripe-Signature"))
        payload = json.loads(raw)
    except stripe.SignatureVerificationError:
        return _error("bad_signature", "The Stripe-Signature header is missing, wrong or too old.", 400)
    except ValueError:
        return _error("bad_payload", "The body is not a JSON Stripe event.", 400)
    try:
        receipt = webhooks.receive(payload)
    except webhooks.InvalidEvent as exc:
        return _error("bad_payload", str(exc), 400)
    status = receipt.event.status
    if receipt.failed:
        # Stored and recorded as an OperationError; a 500 makes Stripe deliver it again later.
        return _error("handler_failed", "The event was stored but could not be handled yet.", 500)
    return jsonify(received=True, event=receipt.event.stripe_event_id, status=status,
                   duplicate=receipt.duplicate), 200
