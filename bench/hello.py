"""The baseline: a hello-world Flask endpoint, served the same way as the portal in bench/usage_api.py."""
from flask import Flask, jsonify

app = Flask(__name__)


@app.post("/hello")
def hello():
    return jsonify(hello="world"), 201
