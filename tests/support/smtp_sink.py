#!/usr/bin/env python3
"""A real SMTP server on 127.0.0.1 for end-to-end tests (see tests/support/smtp.rs).

    python3 tests/support/smtp_sink.py --port PORT --dir DIR [--auth-user U --auth-password P]

Every message accepted is stored in DIR as NNNNNN.eml (raw bytes as received, dot-unstuffed)
with NNNNNN.json beside it ({"mail_from": ..., "rcpt_tos": [...]}). Numbers are 6 digits, in
arrival order, and carry on from the highest number already in DIR, so a restarted sink on the
same DIR appends. The json is written first and the .eml is renamed into place last, so a
reader that sees NNNNNN.eml also sees NNNNNN.json.

Prints READY on stdout once listening; runs until SIGTERM or SIGINT, then stops cleanly
(exit 0). With --auth-user and --auth-password, MAIL is refused (530) until AUTH PLAIN or
AUTH LOGIN succeeds with those credentials; AUTH is offered without TLS (loopback only).

Needs aiosmtpd (pip install aiosmtpd).
"""

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import warnings

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
except ImportError as err:  # pragma: no cover - reported to the Rust side
    sys.stderr.write(
        "smtp_sink.py: cannot import aiosmtpd (%s); install it with: "
        "python3 -m pip install aiosmtpd\n" % err
    )
    sys.exit(3)

EML_RE = re.compile(r"^(\d{6})\.eml$")


def _fsync_write(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class SinkHandler:
    """Stores each message in a directory; runs on the controller's single event-loop thread."""

    def __init__(self, directory):
        self.directory = directory
        self.lock = threading.Lock()
        self.next_seq = self._first_free_seq()

    def _first_free_seq(self):
        highest = 0
        for name in os.listdir(self.directory):
            m = EML_RE.match(name)
            if m:
                highest = max(highest, int(m.group(1)))
        return highest + 1

    async def handle_DATA(self, server, session, envelope):
        try:
            raw = envelope.original_content
            if raw is None:
                raw = envelope.content
            if raw is None:
                raw = b""
            if isinstance(raw, str):
                raw = raw.encode("utf-8", "surrogateescape")
            meta = {
                "mail_from": _text(envelope.mail_from),
                "rcpt_tos": [_text(r) for r in (envelope.rcpt_tos or [])],
            }
            with self.lock:
                seq = self.next_seq
                self.next_seq += 1
            base = os.path.join(self.directory, "%06d" % seq)
            json_tmp = base + ".json.tmp"
            eml_tmp = base + ".eml.tmp"
            _fsync_write(json_tmp, json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            os.replace(json_tmp, base + ".json")
            _fsync_write(eml_tmp, raw)
            os.replace(eml_tmp, base + ".eml")
        except Exception as err:  # never let the session die on our own bug
            sys.stderr.write("smtp_sink.py: failed to store message: %r\n" % (err,))
            sys.stderr.flush()
            return "451 4.3.0 Sink could not store the message"
        return "250 OK"


def _text(value):
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def make_authenticator(user, password):
    want_user = user.encode("utf-8")
    want_password = password.encode("utf-8")

    def authenticator(server, session, envelope, mechanism, auth_data):
        try:
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == want_user
                and auth_data.password == want_password
            )
        except Exception:
            ok = False
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        # handled=False with no message: aiosmtpd answers 535 itself.
        return AuthResult(success=False, handled=False)

    return authenticator


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--auth-user")
    parser.add_argument("--auth-password")
    args = parser.parse_args()
    if (args.auth_user is None) != (args.auth_password is None):
        parser.error("--auth-user and --auth-password go together")

    # aiosmtpd logs every session at INFO and warns about AUTH without TLS; keep stderr for
    # real problems.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")

    os.makedirs(args.dir, exist_ok=True)
    handler = SinkHandler(args.dir)

    kwargs = dict(
        hostname="127.0.0.1",
        port=args.port,
        server_hostname="smtp-sink.test",
        decode_data=False,
        enable_SMTPUTF8=True,
        ready_timeout=15.0,
    )
    if args.auth_user is not None:
        kwargs.update(
            authenticator=make_authenticator(args.auth_user, args.auth_password),
            auth_required=True,
            auth_require_tls=False,
        )

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    controller = Controller(handler, **kwargs)
    try:
        controller.start()
    except Exception as err:
        sys.stderr.write(
            "smtp_sink.py: could not start on 127.0.0.1:%d: %r\n" % (args.port, err)
        )
        sys.exit(2)

    sys.stdout.write("READY\n")
    sys.stdout.flush()

    # Event.wait with a timeout lets the main thread run signal handlers promptly. If the test
    # process dies without stopping us (SIGKILL), we are re-parented: stop then too.
    parent = os.getppid()
    while not stop.wait(0.5):
        if os.getppid() != parent:
            break
    controller.stop()


if __name__ == "__main__":
    main()
