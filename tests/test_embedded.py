"""The embedded stand-ins start as real processes, answer, and leave nothing behind when stopped."""
from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap
import time
from email.message import EmailMessage
from pathlib import Path

import psycopg
import pytest
import redis
import sqlalchemy as sa
import stripe

from devtools import mailcatcher
from devtools.embedded import (
    EmbeddedMail,
    EmbeddedRedis,
    EmbeddedServiceError,
    EmbeddedStripe,
    free_port,
    port_in_use,
)
from devtools.postgres import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent


def wait_closed(port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_in_use(port):
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_answers_ping_and_stops(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("appendonly")["appendonly"] == "no"
        port = server.port
    assert not server.running
    assert wait_closed(port)


def test_stripe_creates_a_customer_and_stops(monkeypatch):
    with EmbeddedStripe() as server:
        monkeypatch.setattr(stripe, "api_base", server.url)
        monkeypatch.setattr(stripe, "api_key", "sk_test_embedded")
        customer = stripe.Customer.create(email="ada@example.com", name="Ada")
        assert customer.id.startswith("cus_")
        assert stripe.Customer.retrieve(customer.id).email == "ada@example.com"
        port = server.port
    assert wait_closed(port)


def test_mail_lands_in_maildir_and_is_parsed(tmp_path):
    maildir = tmp_path / "mail"
    with EmbeddedMail(maildir) as server:
        message = EmailMessage()
        message["From"] = "billing@portal.test"
        message["To"] = "ada@example.com"
        message["Subject"] = "Your invoice €12.00"
        message.set_content("Plain body")
        message.add_alternative("<p>HTML body</p>", subtype="html")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as smtp:
            smtp.send_message(message, to_addrs=["ada@example.com", "audit@portal.test"])

        got = mailcatcher.wait_for_message(maildir, lambda m: m["To"] == "ada@example.com", timeout=5)
        assert got["Subject"] == "Your invoice €12.00"
        assert got.get_body(("plain",)).get_content().strip() == "Plain body"
        assert "HTML body" in got.get_body(("html",)).get_content()
        # The envelope is kept: a Bcc recipient shows up here though not in the headers.
        assert "audit@portal.test" in got["X-RcptTo"]
        assert [m["Subject"] for m in server.messages()] == ["Your invoice €12.00"]
        assert not list((maildir / ".tmp").iterdir()), "temporary files are renamed into place"

        with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as smtp:
            smtp.sendmail("a@portal.test", ["b@example.com"], b"Subject: second\r\n\r\nbody\r\n")
        mailcatcher.wait_for_message(maildir, lambda m: m["Subject"] == "second", timeout=5)
        assert [m["Subject"] for m in mailcatcher.read_messages(maildir)] == ["Your invoice €12.00", "second"]

        assert mailcatcher.clear(maildir) == 2
        assert mailcatcher.read_messages(maildir) == []
        with pytest.raises(TimeoutError, match="no matching message"):
            mailcatcher.wait_for_message(maildir, timeout=0.2)
        port = server.port
    assert wait_closed(port)


def test_postgres_answers_and_stops(tmp_path):
    with EmbeddedPostgres(tmp_path / "pg") as server:
        assert server.url.startswith("postgresql+psycopg://")
        with psycopg.connect(server.uri()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        url = server.create_database("portal_test")
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT current_database()")).scalar() == "portal_test"
        finally:
            engine.dispose()
        uri = server.uri()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri, connect_timeout=2)


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EmbeddedServiceError, match=f"port {port} is already in use"):
            EmbeddedRedis(tmp_path / "redis", port=port).start()


def test_a_child_that_dies_while_starting_shows_its_log(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(EmbeddedServiceError) as info:
        EmbeddedMail(not_a_dir).start(timeout=10)
    message = str(info.value)
    assert "mailcatcher exited with code" in message
    assert "Error" in message  # the child's traceback tail


def test_children_die_with_their_parent(tmp_path):
    """Even a SIGKILLed parent leaves no stand-in running."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from devtools.embedded import EmbeddedRedis, EmbeddedMail
        r = EmbeddedRedis({str(tmp_path / "redis")!r}).start()
        m = EmbeddedMail({str(tmp_path / "mail")!r}).start()
        print(r.port, m.port, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        ports = [int(p) for p in parent.stdout.readline().split()]
        assert len(ports) == 2 and all(port_in_use(p) for p in ports)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        assert all(wait_closed(p) for p in ports)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
