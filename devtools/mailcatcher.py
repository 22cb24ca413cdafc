"""A local SMTP catcher: every message it receives lands as one .eml file in a maildir.

Run it with ``python -m devtools.mailcatcher --port 8025 --maildir instance/mail``. Tests and
staff pages read what arrived with `read_messages`, `wait_for_message` and `clear`.

Files are named ``<arrival ns>-<pid>-<seq>.eml`` so sorting by name is sorting by arrival,
and each is written under ``.tmp/`` then renamed, so a reader never sees half a message.
"""
from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

log = logging.getLogger("devtools.mailcatcher")

_TMP = ".tmp"
_seq = itertools.count()


class MaildirHandler:
    """aiosmtpd handler that stores each message's bytes, with the envelope as X- headers."""

    def __init__(self, maildir: str | os.PathLike[str]) -> None:
        self.maildir = Path(maildir)
        (self.maildir / _TMP).mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        # The envelope says who really gets the mail (Bcc recipients are not in the headers).
        envelope_headers = (
            f"X-Peer: {session.peer[0] if session.peer else ''}\r\n"
            f"X-MailFrom: {envelope.mail_from}\r\n"
            f"X-RcptTo: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        store(self.maildir, envelope_headers + content)
        log.info("mail from %s to %s stored", envelope.mail_from, ", ".join(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def store(maildir: str | os.PathLike[str], raw: bytes) -> Path:
    """Write one raw message into `maildir` atomically; return its path."""
    maildir = Path(maildir)
    name = f"{time.time_ns():020d}-{os.getpid()}-{next(_seq):06d}.eml"
    tmp = maildir / _TMP / name
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    final = maildir / name
    os.replace(tmp, final)
    return final


def message_paths(maildir: str | os.PathLike[str]) -> list[Path]:
    """The .eml files in `maildir`, oldest first."""
    maildir = Path(maildir)
    if not maildir.is_dir():
        return []
    return sorted(maildir.glob("*.eml"), key=lambda p: p.name)


def parse(raw: bytes) -> EmailMessage:
    """Parse raw bytes into an EmailMessage (modern policy: `get_body`, `get_content` work)."""
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def read_messages(maildir: str | os.PathLike[str]) -> list[EmailMessage]:
    """Every message in `maildir`, parsed, in order of arrival."""
    messages = []
    for path in message_paths(maildir):
        try:
            messages.append(parse(path.read_bytes()))
        except FileNotFoundError:  # cleared while we listed it
            continue
    return messages


def clear(maildir: str | os.PathLike[str]) -> int:
    """Delete every message in `maildir`; return how many were deleted."""
    removed = 0
    for path in message_paths(maildir):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def wait_for_message(
    maildir: str | os.PathLike[str],
    predicate: Callable[[EmailMessage], bool] | None = None,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> EmailMessage:
    """The first message (oldest first) matching `predicate`, waiting up to `timeout` seconds.

    Raises TimeoutError listing what did arrive, so a failing test says why.
    """
    deadline = time.monotonic() + timeout
    while True:
        messages = read_messages(maildir)
        for message in messages:
            if predicate is None or predicate(message):
                return message
        if time.monotonic() >= deadline:
            seen = "; ".join(f"to={m['To']!s} subject={m['Subject']!s}" for m in messages) or "none"
            raise TimeoutError(f"no matching message in {maildir} after {timeout}s (messages seen: {seen})")
        time.sleep(interval)


async def serve(host: str, port: int, maildir: str | os.PathLike[str]) -> None:
    """Serve SMTP on host:port until SIGINT or SIGTERM."""
    from aiosmtpd.smtp import SMTP

    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, enable_SMTPUTF8=True, data_size_limit=50 * 1024 * 1024, hostname="mailcatcher.local"),
        host=host,
        port=port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mailcatcher: smtp://{host}:{port} -> {Path(maildir).resolve()}", flush=True)
    async with server:
        await stop.wait()
    print("mailcatcher: stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.mailcatcher", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--maildir", default="instance/mail")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mailcatcher %(message)s")
    asyncio.run(serve(args.host, args.port, args.maildir))


if __name__ == "__main__":
    main()
