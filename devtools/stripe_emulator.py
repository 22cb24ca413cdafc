"""localstripe with two behaviours of the real Stripe API that it lacks (development and tests only).

The portal's money path depends on both, so its tests must see them:

1. **Idempotency-Key on POST.** Stripe stores the first response to a key and replays it for a
   request with the same key and parameters (`Idempotent-Replayed: true`); the same key with other
   parameters is refused (400, `idempotency_error`). localstripe ignores the header, so a retry
   after a lost answer would charge twice there and never on Stripe.
2. **`customer` when listing PaymentIntents** (`GET /v1/payment_intents?customer=cus_…`), newest
   first, as Stripe does: how a charge whose answer was lost is found again.

Nothing else changes: the app, its data and its routes are localstripe's own. State is kept in
memory only (never pickled to /tmp). Run: python -m devtools.stripe_emulator --port 8420
"""
from __future__ import annotations

import hashlib
import json
import sys

from aiohttp import web

#: Idempotency-Key → (fingerprint of the request, status, body) of the first answer.
_replies: dict[str, tuple[str, int, bytes]] = {}


@web.middleware
async def idempotency(request: web.Request, handler):
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key or not request.path.startswith("/v1/"):
        return await handler(request)
    body = await request.read()  # aiohttp keeps it: the handler reads it again
    fingerprint = hashlib.sha256(request.path.encode() + b"\0" + body).hexdigest()
    seen = _replies.get(key)
    if seen is not None:
        if seen[0] != fingerprint:
            return web.json_response({"error": {
                "type": "idempotency_error",
                "message": "Keys for idempotent requests can only be used with the same parameters they were "
                           "first used with.",
            }}, status=400)
        replay = web.Response(status=seen[1], body=seen[2], content_type="application/json")
        replay.headers["Idempotent-Replayed"] = "true"
        return replay
    response = await handler(request)
    # Stripe saves any result of an endpoint that ran (declines included), not server errors.
    if response.status < 500 and isinstance(getattr(response, "body", None), bytes):
        _replies[key] = (fingerprint, response.status, response.body)
    return response


@web.middleware
async def list_intents_by_customer(request: web.Request, handler):
    customer = request.query.get("customer")
    if request.method != "GET" or request.path != "/v1/payment_intents" or not customer:
        return await handler(request)
    query = {k: v for k, v in request.query.items() if k not in ("customer", "limit", "starting_after")}
    limit = int(request.query.get("limit", "10"))
    response = await handler(request.clone(rel_url=request.rel_url.with_query({**query, "limit": "1000000"})))
    if response.status != 200:
        return response
    page = json.loads(response.body)
    mine = [intent for intent in reversed(page["data"]) if intent.get("customer") == customer]
    page.update(data=mine[:limit], has_more=len(mine) > limit, url="/v1/payment_intents")
    return web.json_response(page)


def main() -> None:
    import localstripe.resources as resources
    from localstripe import server

    resources.Store.dump_to_disk = lambda self: None  # memory only
    server.app.middlewares.insert(0, list_intents_by_customer)
    server.app.middlewares.insert(0, idempotency)
    sys.argv[0] = "localstripe"
    server.start()


if __name__ == "__main__":
    main()
