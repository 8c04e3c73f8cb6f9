#!/usr/bin/env python3
"""holdconns.py: open N PostgreSQL client connections (startup + auth, stdlib only) and hold them idle.

Used by bench/memory.sh to measure a pooler's memory per idle client.

Speaks just enough of the v3 protocol: StartupMessage, then trust / cleartext / MD5 / SCRAM-SHA-256
authentication, and waits for ReadyForQuery on every connection. Then it prints "READY <n>" (and
writes --ready-file if given), holds all sockets open without sending anything until --hold seconds
pass or it gets SIGTERM/SIGINT, and closes them with a Terminate message.

  holdconns.py --port 16432 -n 1000 --hold 60 --ready-file /tmp/ready

It raises its own open-files soft limit toward the hard limit when N needs it, and stops opening
(reporting how many it got) at the first failure or after --max-connect-time seconds.
"""
import argparse
import base64
import hashlib
import hmac
import os
import resource
import signal
import socket
import struct
import sys
import time

_salted_cache = {}


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


def recv_msg(s):
    hdr = recv_exact(s, 5)
    typ, ln = hdr[:1], struct.unpack("!I", hdr[1:])[0]
    return typ, recv_exact(s, ln - 4)


def send_msg(s, typ, payload):
    s.sendall(typ + struct.pack("!I", len(payload) + 4) + payload)


def error_text(payload):
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('S', '')} {fields.get('C', '')}: {fields.get('M', '')}"


def scram(s, user, password, mechanisms):
    if b"SCRAM-SHA-256" not in mechanisms:
        raise RuntimeError(f"no SCRAM-SHA-256 in {mechanisms}")
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    send_msg(s, b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
    typ, p = recv_msg(s)
    if typ == b"E":
        raise RuntimeError(error_text(p))
    code = struct.unpack("!I", p[:4])[0]
    if code != 11:
        raise RuntimeError(f"expected SASLContinue, got auth code {code}")
    server_first = p[4:].decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    rnonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
    if not rnonce.startswith(nonce):
        raise RuntimeError("server nonce does not extend client nonce")
    key = (salt, iters)
    if key not in _salted_cache:
        _salted_cache[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
    salted = _salted_cache[key]
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    final_wo_proof = f"c=biws,r={rnonce}"
    auth_msg = f"{first_bare},{server_first},{final_wo_proof}".encode()
    sig = hmac.new(stored_key, auth_msg, hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
    send_msg(s, b"p", f"{final_wo_proof},p={proof}".encode())


def connect(host, port, user, db, password, timeout):
    s = socket.create_connection((host, port), timeout=timeout)
    params = b"".join(k + b"\0" + v.encode() + b"\0" for k, v in
                      ((b"user", user), (b"database", db), (b"application_name", "holdconns"))) + b"\0"
    body = struct.pack("!I", 196608) + params
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    while True:
        typ, p = recv_msg(s)
        if typ == b"E":
            raise RuntimeError(error_text(p))
        if typ == b"R":
            code = struct.unpack("!I", p[:4])[0]
            if code == 0:
                continue  # AuthenticationOk
            elif code == 3:
                send_msg(s, b"p", password.encode() + b"\0")
            elif code == 5:
                inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                send_msg(s, b"p", b"md5" + hashlib.md5(inner + p[4:8]).hexdigest().encode() + b"\0")
            elif code == 10:
                scram(s, user, password, p[4:].split(b"\0"))
            elif code == 12:
                continue  # SASLFinal (server signature not verified: test helper)
            else:
                raise RuntimeError(f"unsupported auth code {code}")
        elif typ == b"Z":
            s.settimeout(None)
            return s
        # ParameterStatus 'S', BackendKeyData 'K', NoticeResponse 'N': ignore


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="app")
    ap.add_argument("--db", default="app")
    ap.add_argument("--password", default=os.environ.get("PGPASSWORD", "app"))
    ap.add_argument("-n", type=int, default=1000, help="connections to open")
    ap.add_argument("--hold", type=float, default=60, help="seconds to hold them (bounded; default 60)")
    ap.add_argument("--timeout", type=float, default=10, help="per-connection connect/auth timeout")
    ap.add_argument("--ready-file", help="write 'READY n' here once all are connected")
    ap.add_argument("--max-connect-time", type=float, default=600, help="give up opening more after this")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError) as e:
            print(f"cannot raise open-files limit from {soft}: {e}", file=sys.stderr, flush=True)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and soft < want:
            print(f"warning: open-files limit {soft} < {want}: expect failures", file=sys.stderr, flush=True)

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))

    conns, t0 = [], time.monotonic()
    for i in range(a.n):
        if stop["flag"]:
            break
        if time.monotonic() - t0 > a.max_connect_time:
            print(f"gave up after {a.max_connect_time:.0f}s with {len(conns)} open", file=sys.stderr, flush=True)
            break
        try:
            conns.append(connect(a.host, a.port, a.user, a.db, a.password, a.timeout))
        except Exception as e:  # noqa: BLE001 - report and stop opening more
            print(f"connection {i + 1} failed: {e}", file=sys.stderr, flush=True)
            break
    msg = f"READY {len(conns)}"
    print(f"{msg} ({time.monotonic() - t0:.1f}s)", flush=True)
    if a.ready_file:
        with open(a.ready_file, "w") as f:
            f.write(msg + "\n")
    deadline = time.monotonic() + a.hold
    while not stop["flag"] and time.monotonic() < deadline:
        time.sleep(0.2)
    for s in conns:
        try:
            send_msg(s, b"X", b"")
            s.close()
        except OSError:
            pass
    print(f"CLOSED {len(conns)}", flush=True)
    return 0 if len(conns) == a.n else 1


if __name__ == "__main__":
    sys.exit(main())
