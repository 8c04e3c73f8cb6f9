#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/seeds/<target>/: a few well-formed inputs per target
(a real client's and server's messages) for libFuzzer to mutate from. Run from anywhere."""
import base64
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def frame(tag, body=b""):
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def startup(params, code=196608):
    body = struct.pack("!I", code) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query(sql):
    return frame(b"Q", cstr(sql))


def parse(name, sql):
    return frame(b"P", cstr(name) + cstr(sql) + b"\0\0")


def bind(stmt, value):
    return frame(b"B", cstr("") + cstr(stmt) + b"\0\0\0\1" + struct.pack("!i", len(value)) + value + b"\0\0")


EXECUTE = frame(b"E", b"\0\0\0\0\0")
SYNC = frame(b"S")
FLUSH = frame(b"H")
TERMINATE = frame(b"X")
DESCRIBE_PORTAL = frame(b"D", b"P\0")


def ready(status=b"I"):
    return frame(b"Z", status)


def row_description(cols):
    body = struct.pack("!H", len(cols))
    for c in cols:
        body += cstr(c) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return frame(b"T", body)


def data_row(vals):
    body = struct.pack("!H", len(vals))
    for v in vals:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return frame(b"D", body)


def complete(tag):
    return frame(b"C", cstr(tag))


def error(sev, code, msg):
    return frame(b"E", b"S" + cstr(sev) + b"V" + cstr(sev) + b"C" + cstr(code) + b"M" + cstr(msg) + b"\0")


def param_status(k, v):
    return frame(b"S", cstr(k) + cstr(v))


LOGIN = (
    frame(b"R", struct.pack("!I", 0))
    + param_status("server_version", "15.4")
    + param_status("standard_conforming_strings", "on")
    + frame(b"K", struct.pack("!ii", 1, 2))
    + ready()
)
SELECT_REPLY = row_description(["a"]) + data_row([b"1"]) + complete("SELECT 1") + ready()


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def relay(flags, client, server):
    return bytes([flags]) + struct.pack("!H", len(client)) + client + server


EXTENDED = parse("", "select $1") + bind("", b"7") + DESCRIBE_PORTAL + EXECUTE + SYNC
EXTENDED_REPLY = frame(b"1") + frame(b"2") + row_description(["a"]) + data_row([b"7"]) + complete("SELECT 1") + ready()

# frame: client and server byte streams.
write("frame", "query", query("select 1") + TERMINATE)
write("frame", "extended", EXTENDED)
write("frame", "prepared", parse("s1", "update t set a = $1") + FLUSH + bind("s1", b"1") + EXECUTE + SYNC)
write("frame", "server_reply", SELECT_REPLY + error("ERROR", "42601", "syntax error") + ready(b"E"))
write("frame", "login_reply", LOGIN)
write("frame", "copy", query("copy t from stdin") + frame(b"d", b"1\n") + frame(b"c") + frame(b"f", cstr("no")))

# startup: first byte picks the parser (0/1 startup, 2 SCRAM server, 3 SCRAM client, 4 verifier, 5 md5).
write("startup", "startup", b"\0" + startup([("user", "app"), ("database", "db"), ("application_name", "x")]))
write("startup", "ssl", b"\0" + struct.pack("!II", 8, 80877103))
write("startup", "cancel", b"\1" + struct.pack("!IIii", 16, 80877102, 42, 7))
write("startup", "options", b"\0" + startup([("user", "u"), ("options", "-c search_path=x")], 196610))
first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
write("startup", "scram_server", b"\2" + cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first
      + b"\xff" + b"c=biws,r=rOprNGfwEbeRWgbNEkqOxyz,p=" + base64.b64encode(b"\0" * 32))
pfirst = b"p=tls-server-end-point,,n=,r=abc"
write("startup", "scram_plus", b"\x12" + cstr("SCRAM-SHA-256-PLUS") + struct.pack("!i", len(pfirst)) + pfirst
      + b"\xff" + b"c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsBwcH,r=abcdef,p=" + base64.b64encode(b"\1" * 32))
write("startup", "scram_client", b"\3" + b"r=*srv,s=" + base64.b64encode(b"salt" * 4) + b",i=4096"
      + b"\xffv=" + base64.b64encode(b"\0" * 32))
write("startup", "verifier", b"\4SCRAM-SHA-256$4096:" + base64.b64encode(b"salt" * 4) + b"$"
      + base64.b64encode(b"k" * 32) + b":" + base64.b64encode(b"s" * 32))
write("startup", "md5", b"\5md5" + b"0123456789abcdef" * 2)

# sql: first byte is the classifier flags (1 safe functions, 2 standard_conforming_strings).
SQL = {
    "select": "SELECT abalance FROM pgbench_accounts WHERE aid = 42817;",
    "tx": "BEGIN; UPDATE t SET a = 1 WHERE id = $1; COMMIT;",
    "hint": "/* pgshift:replica */ select now()",
    "set": "SET search_path TO app, public; SET LOCAL statement_timeout = '1s'",
    "dollar": "select $tag$ it's ; here $tag$, $$x$$ from t",
    "estring": "select E'\\'; delete from t; --' as x, 'a''b', U&\"d\\0061t\"",
    "cte": "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "functions": "select nextval('s'), f(1), myschema.g(2), pg_advisory_lock(1), set_config('a','b',false)",
    "copy": "COPY (select 1) TO STDOUT; COPY t FROM STDIN",
    "explain": "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
    "cursor": "DECLARE c CURSOR WITH HOLD FOR SELECT 1; FETCH 10 FROM c; CLOSE c",
    "locking": "SELECT * FROM t FOR UPDATE SKIP LOCKED",
    "prepare": "PREPARE p(int) AS SELECT $1; EXECUTE p(1); DEALLOCATE p",
    "temp": "CREATE TEMP TABLE x(a int); LISTEN ch; NOTIFY ch, 'x'",
    "comment": "/* nested /* comment */ */ select -- line\n 1",
    "into": "SELECT * INTO new_t FROM t; select 1 union select 2",
    "insert": "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 81, -4417, CURRENT_TIMESTAMP), ('it''s', null, 2.5e-3, +4, default);",
    "end": "  end transaction ;",
}
for i, (name, sql) in enumerate(SQL.items()):
    write("sql", name, bytes([i % 4]) + sql.encode())

# relay: flags (1 client sends its own startup, 2 backend answers the login), split, client | server.
write("relay", "simple", relay(0, query("select 1"), SELECT_REPLY))
write("relay", "extended", relay(0, EXTENDED, EXTENDED_REPLY))
write("relay", "raw_login", relay(2, query("select 1") + TERMINATE, LOGIN + SELECT_REPLY))
write("relay", "own_startup", relay(1, startup([("user", "app"), ("database", "db")]) + query("select 1"), SELECT_REPLY))
write("relay", "tx", relay(0, query("begin") + query("update t set a = 1") + query("commit"),
                            complete("BEGIN") + ready(b"T") + complete("UPDATE 1") + ready(b"T") + complete("COMMIT") + ready()))
write("relay", "copy_in", relay(0, query("copy t from stdin") + frame(b"d", b"1\n") + frame(b"c"),
                                frame(b"G", b"\0\0\1\0\0") + complete("COPY 1") + ready()))
write("relay", "error", relay(0, query("selec 1"), error("ERROR", "42601", "syntax error") + ready()))
write("relay", "fatal", relay(0, query("select 1"), error("FATAL", "57P01", "terminating connection")))
write("relay", "md5_login", relay(2, query("select 1"), frame(b"R", struct.pack("!I", 5) + b"salt") + LOGIN + SELECT_REPLY))
write("relay", "prepared", relay(0, parse("s1", "select 1") + SYNC + bind("s1", b"") + EXECUTE + SYNC,
                                 frame(b"1") + ready() + frame(b"2") + data_row([b"1"]) + complete("SELECT 1") + ready()))
