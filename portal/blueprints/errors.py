"""Error pages for browsers, JSON errors for the API."""
from __future__ import annotations

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 429: "too_many_requests", 500: "internal_error"}


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/webhooks/")


def register(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        if _wants_json():
            return jsonify(error={"code": "csrf_failed", "message": error.description}), 400
        return render_template("errors/error.html", code=400, title="Form expired",
                               message="The form was missing its security token or had expired. "
                                       "Go back, reload the page and try again."), 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        code = error.code or 500
        if _wants_json():
            response = jsonify(error={"code": _CODES.get(code, "error"), "message": error.description})
            response.status_code = code
            return response
        return render_template("errors/error.html", code=code, title=error.name, message=error.description), code
