"""psycopg 3 through pgshift in transaction pooling mode.

Every connection uses prepare_threshold=0: each statement becomes a named server-side prepared
statement (_pg3_N) on first use, which is what breaks naive transaction poolers. Run alone:
    tests/drivers/run.sh psycopg            (everything set up)
    .venv/bin/python test_psycopg.py NAME   (with PGSHIFT_DRV_* exported, see README.md)
"""

import threading
import time
from decimal import Decimal
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import errors

from drvcommon import (
    ONE_URL,
    POOL_SIZE,
    PRIMARY_URL,
    check_primary_pool_free,
    PROXY_URL,
    REPLICA_PORTS,
    SASL_ROLES,
    SHARED_SQL,
    UNKNOWN_PID,
    create_sasl_roles,
    saslprep,
    check,
    check_multiplexing,
    eq,
    main,
    primary,
    sync_replicas,
    test,
    wait_running,
)

NBACKENDS = 1 + len(REPLICA_PORTS)


def connect(**kw):
    kw.setdefault("autocommit", True)
    kw.setdefault("prepare_threshold", 0)
    return psycopg.connect(PROXY_URL, **kw)


def prepared_count(conn):
    """How many statements psycopg believes it prepared on the server (psycopg internals)."""
    return len(conn._prepared._names)


def parallel(n, fn):
    """Runs fn(0..n-1) on n threads at once; returns the results, re-raising the first failure."""
    start = threading.Barrier(n)

    def run(k):
        start.wait(timeout=30)
        return fn(k)

    with ThreadPoolExecutor(max_workers=n) as ex:
        return [f.result() for f in [ex.submit(run, k) for k in range(n)]]


@test
def schema_through_proxy():
    """DDL and a bulk insert through pgshift (they go to the primary)."""
    with connect() as c:
        c.execute("drop table if exists drv_psy_items, drv_psy_many, drv_psy_copy, drv_psy_tx")
        c.execute("drop schema if exists drv_leak cascade")
        c.execute("create table drv_psy_items (id int primary key, grp int not null, v text not null)")
        c.execute("insert into drv_psy_items select i, i % 10, 'item-' || i from generate_series(0, 999) i")
        c.execute("create table drv_psy_many (id int primary key, grp int not null, v text)")
        c.execute("create table drv_psy_copy (id int primary key, t text, n numeric, b bytea)")
        c.execute("create table drv_psy_tx (id int primary key, v text)")
        c.execute("create schema drv_leak")
        c.execute(
            "do $$ begin if not exists (select from pg_roles where rolname = 'drv_low') "
            "then create role drv_low nologin; end if; end $$"
        )
    sync_replicas()


QUERIES = [
    ("select %s::int * 2, pg_backend_pid(), inet_server_port()", lambda i: i * 2),
    ("select %s::int + 1000, pg_backend_pid(), inet_server_port()", lambda i: i + 1000),
    ("select count(*)::int + %s, pg_backend_pid(), inet_server_port() from drv_psy_items where grp = 3", lambda i: 100 + i),
    ("select v || %s::text, pg_backend_pid(), inet_server_port() from drv_psy_items where id = 7", lambda i: f"item-7{i}"),
]


@test
def prepared_statements_across_connections():
    """16 clients on a pool of 4 per backend, each reusing 4 named statements 40 times. Clients
    prepare them in different orders, so one psycopg name (_pg3_0) means different SQL on
    different clients."""
    nclients, iters = 16, 40

    def worker(k):
        seen = set()
        order = QUERIES[k % 4 :] + QUERIES[: k % 4]
        with connect() as conn:
            for it in range(iters):
                for q, want in order:
                    i = k * 1000 + it
                    row = conn.execute(q, (i,), prepare=True).fetchone()
                    eq(row[0], want(i), f"client {k} {q!r}")
                    seen.add((row[2], row[1]))
            eq(prepared_count(conn), 4, f"client {k}: statements psycopg prepared")
        return seen

    seen_by_client = parallel(nclients, worker)
    seen = set().union(*seen_by_client)
    per_port = check_multiplexing(seen, nclients, "prepared statements")
    moved = sum(1 for s in seen_by_client if len(s) > 1)
    check(moved > 0, "no client ever moved to another server connection: pooling did not multiplex")
    return f"server conns per port {per_port}, {moved}/{nclients} clients moved between servers"


@test
def discard_all_and_deallocate_do_not_break_others():
    """One client runs DISCARD ALL / DEALLOCATE ALL (which drop every prepared statement on the
    server it lands on) while others keep reusing their named statements."""
    stop = threading.Event()

    def discarder(_):
        n = 0
        with connect(prepare_threshold=None) as c:
            while not stop.is_set() and n < 200:
                c.execute("discard all" if n % 2 else "deallocate all")
                eq(c.execute("select 1").fetchone()[0], 1, "discarder select")
                n += 1
        return n

    def user(k):
        with connect() as conn:
            for it in range(60):
                q, want = QUERIES[(k + it) % 4]
                eq(conn.execute(q, (it,), prepare=True).fetchone()[0], want(it), f"user {k} it {it}")
        return 0

    with ThreadPoolExecutor(max_workers=9) as ex:
        d = ex.submit(discarder, 0)
        users = [ex.submit(user, k) for k in range(8)]
        try:
            for f in users:
                f.result()
        finally:
            stop.set()
        n = d.result()
    return f"{n} DISCARD ALL/DEALLOCATE ALL meanwhile"


@test
def executemany_concurrent():
    """executemany (psycopg pipelines it: many Bind/Execute, one Sync) from 8 clients at once."""
    nclients, nrows = 8, 250

    def worker(k):
        with connect() as conn:
            cur = conn.cursor()
            rows = [(k * 10000 + i, i % 7, f"v{k}-{i}") for i in range(nrows)]
            cur.executemany("insert into drv_psy_many (id, grp, v) values (%s, %s, %s)", rows)
            eq(cur.rowcount, nrows, f"client {k} executemany rowcount")
            rows = [(k * 10000 + nrows + i, 99, None) for i in range(10)]
            cur.executemany(
                "insert into drv_psy_many (id, grp, v) values (%s, %s, %s) returning id", rows, returning=True
            )
            ids = []
            while True:
                ids.extend(r[0] for r in cur.fetchall())
                if not cur.nextset():
                    break
            eq(ids, [r[0] for r in rows], f"client {k} executemany returning")
        return 0

    parallel(nclients, worker)
    sync_replicas()
    with connect() as c:
        n, s = c.execute("select count(*), sum(id) from drv_psy_many").fetchone()
    want = sum(k * 10000 + i for k in range(nclients) for i in range(nrows + 10))
    eq((n, s), (nclients * (nrows + 10), want), "rows after executemany (read through pgshift)")


@test
def pipeline_mode():
    """Explicit pipeline mode: writes and reads queued without waiting, results fetched mid-way
    (psycopg sends Flush, not Sync, to get them), an error in the middle, then reuse."""
    with connect() as c:
        cur = c.cursor()
        # A read first, fetched with a Flush before the pipeline's writes are sent.
        with c.pipeline():
            cur.execute("select count(*) from drv_psy_items where grp = %s", (1,), prepare=True)
            eq(cur.fetchone()[0], 100, "read at the start of a pipeline")
            for i in range(50):
                cur.execute("insert into drv_psy_many (id, grp, v) values (%s, 50, 'p')", (500000 + i,), prepare=True)
            cur.execute("select count(*) from drv_psy_many where grp = 50", prepare=True)
            eq(cur.fetchone()[0], 50, "pipelined inserts visible in the same pipeline")
        # An error aborts the rest of the batch up to the Sync; statements parsed before it stay.
        try:
            with c.pipeline():
                cur.execute("select %s::int + 1", (1,), prepare=True)
                cur.execute("select 1/0")
                cur.execute("select %s::int + 2", (1,), prepare=True)
            raise AssertionError("division by zero in a pipeline did not raise")
        except errors.DivisionByZero:
            pass
        for i in range(20):
            eq(c.execute("select %s::int + 1", (i,), prepare=True).fetchone()[0], i + 1, "reuse after pipeline error")
            eq(c.execute("select %s::int + 2", (i,), prepare=True).fetchone()[0], i + 2, "reuse after pipeline error")


@test
def pipeline_error_gives_the_server_back():
    """A pipeline whose statement fails, with more statements sent after the error reached
    pgshift, then the Sync: the batch fails as a whole, the client goes on, and its server
    connection returns to the pool (the client is idle)."""
    a = connect()
    cur = a.cursor()
    try:
        with a.pipeline():
            cur.execute("insert into drv_psy_tx values (%s, 'pipe')", (7,))
            cur.execute("insert into drv_psy_tx values (%s, 'pipe')", (7,))
            time.sleep(0.3)  # the ErrorResponse arrives before the next statement is sent
            cur.execute("insert into drv_psy_tx values (%s, 'pipe')", (8,))
        raise AssertionError("duplicate key in a pipeline did not raise")
    except errors.UniqueViolation:
        pass
    eq(a.execute("select 11").fetchone()[0], 11, "after the failed pipeline")
    with primary() as p:
        eq(p.execute("select count(*) from drv_psy_tx where id in (7, 8)").fetchone()[0], 0, "rows of the failed batch")
    check_primary_pool_free(a.close, "after a failed pipeline")
    a.close()


@test
def copy_in_and_out():
    """COPY FROM STDIN (rows, text and binary) and COPY TO STDOUT, from 4 clients at once, inside
    and outside transactions."""
    nclients, nrows = 4, 2000

    def rows_of(k):
        return [(k * 100000 + i, f"row {i} ü\t\\ \"q\"", Decimal(i) * Decimal("1.5"), bytes([i % 256, 0, 255]))
                for i in range(nrows)]

    def worker(k):
        with connect() as conn:
            cur = conn.cursor()
            rows = rows_of(k)
            half = nrows // 2
            with cur.copy("copy drv_psy_copy (id, t, n, b) from stdin") as cp:
                for r in rows[:half]:
                    cp.write_row(r)
            eq(cur.rowcount, half, f"client {k} copy in rowcount")
            with conn.transaction():
                with cur.copy("copy drv_psy_copy (id, t, n, b) from stdin (format binary)") as cp:
                    cp.set_types(["int4", "text", "numeric", "bytea"])
                    for r in rows[half:]:
                        cp.write_row(r)
                # read back inside the transaction (primary, sees the uncommitted rows)
                got = []
                with cur.copy(
                    "copy (select id, t, n, b from drv_psy_copy where id / 100000 = %s order by id) to stdout", (k,)
                ) as cp:
                    cp.set_types(["int4", "text", "numeric", "bytea"])
                    got = [(r[0], r[1], r[2], bytes(r[3])) for r in cp.rows()]
                eq(len(got), nrows, f"client {k} copy out rows")
                check(got == rows, f"client {k}: COPY OUT differs from what went in")
            # raw copy out in text format, outside a transaction (a read: a replica may serve it)
            sync_replicas()
            data = bytearray()
            with cur.copy("copy (select id from drv_psy_copy where id / 100000 = %s order by id) to stdout", (k,)) as cp:
                for chunk in cp:
                    data += chunk
            want = "".join(f"{r[0]}\n" for r in rows).encode()
            check(bytes(data) == want, f"client {k}: text COPY OUT differs ({len(data)} bytes, want {len(want)})")
            return 0

    parallel(nclients, worker)
    with connect() as c:
        eq(c.execute("select count(*) from drv_psy_copy").fetchone()[0], nclients * nrows, "rows after copy")


@test
def cancel_running_query():
    """conn.cancel() and conn.cancel_safe() interrupt pg_sleep(10) (57014); the connection and its
    prepared statements keep working; also inside a transaction."""
    with connect() as c:
        for how in ("cancel", "cancel_safe", "cancel_in_tx"):
            timer = threading.Timer(0.7, c.cancel_safe if how == "cancel_safe" else c.cancel)
            t0 = time.monotonic()
            timer.start()
            try:
                if how == "cancel_in_tx":
                    c.execute("begin")
                    c.execute("insert into drv_psy_tx values (1, 'cancelled')")
                c.execute("select pg_sleep(10)")
                raise AssertionError(f"{how}: pg_sleep(10) was not cancelled")
            except errors.QueryCanceled as e:
                eq(e.sqlstate, "57014", f"{how} sqlstate")
            finally:
                timer.join()
            took = time.monotonic() - t0
            check(took < 5, f"{how}: cancel took {took:.1f}s")
            if how == "cancel_in_tx":
                try:
                    c.execute("select 1")
                    raise AssertionError("statement after a cancelled one in a transaction did not fail")
                except errors.InFailedSqlTransaction:
                    pass
                c.execute("rollback")
            for i in range(20):
                eq(c.execute("select %s::int * 2", (i,), prepare=True).fetchone()[0], i * 2, f"after {how}")
    with primary() as p:
        eq(p.execute("select count(*) from drv_psy_tx where id = 1").fetchone()[0], 0, "cancelled insert")


@test
def cancel_while_waiting_for_a_server():
    """Every primary connection is held by an open transaction; a client's write waits for one and
    cancels: it gets 57014 at once, nothing runs later, and the client works afterwards."""
    holders = [connect() for _ in range(POOL_SIZE)]
    try:
        for h in holders:
            h.execute("begin")
            h.execute("select txid_current()")
        w = connect()
        timer = threading.Timer(0.7, w.cancel)
        t0 = time.monotonic()
        timer.start()
        try:
            w.execute("insert into drv_psy_tx values (5, 'waited')")
            raise AssertionError("the waiting insert was not cancelled")
        except errors.QueryCanceled:
            pass
        finally:
            timer.join()
        took = time.monotonic() - t0
        check(took < 5, f"cancel of a waiting client took {took:.1f}s")
    finally:
        for h in holders:
            h.execute("commit")
            h.close()
    eq(w.execute("select 3").fetchone()[0], 3, "after the cancelled wait")
    time.sleep(0.2)
    with primary() as p:
        eq(p.execute("select count(*) from drv_psy_tx where id = 5").fetchone()[0], 0, "the cancelled insert ran")
    w.close()
    return f"cancelled after {took:.1f}s"


@test
def transaction_error_then_rollback():
    """Errors inside transactions (psycopg's transaction() blocks and manual commit mode), with
    prepared statements, on 8 clients at once: nothing of a failed transaction is committed."""

    def worker(k):
        base = 1000 + k * 100
        with connect() as c:
            try:
                with c.transaction():
                    c.execute("insert into drv_psy_tx values (%s, 'a')", (base,))
                    c.execute("select 1/0")
                raise AssertionError("no error")
            except errors.DivisionByZero:
                pass
            with c.transaction():
                c.execute("insert into drv_psy_tx values (%s, 'b')", (base + 1,))
                try:
                    with c.transaction():  # savepoint, rolled back to by the error
                        c.execute("insert into drv_psy_tx values (%s, 'dup')", (base + 1,))
                    raise AssertionError("no unique violation")
                except errors.UniqueViolation:
                    pass
                c.execute("insert into drv_psy_tx values (%s, 'c')", (base + 2,))
        with connect(autocommit=False) as c:
            for i in range(5):
                c.execute("insert into drv_psy_tx values (%s, 'd')", (base + 10 + i,))
                try:
                    c.execute("select * from no_such_table_drv")
                    raise AssertionError("no error")
                except errors.UndefinedTable:
                    pass
                try:
                    c.execute("select 1")
                    raise AssertionError("no 25P02")
                except errors.InFailedSqlTransaction:
                    pass
                c.rollback()
                c.execute("insert into drv_psy_tx values (%s, 'e')", (base + 20 + i,))
                c.commit()
            eq(c.execute("select 42").fetchone()[0], 42, "after rollbacks")
            c.rollback()
        return 0

    parallel(8, worker)
    with primary() as p:
        got = p.execute("select v, count(*) from drv_psy_tx where id >= 1000 group by v order by v").fetchall()
    eq(got, [("b", 8), ("c", 8), ("e", 40)], "committed rows by kind")


@test
def settings_do_not_leak():
    """One client SETs application_name, search_path and statement_timeout outside a transaction;
    20 others (some with their own application_name at connect) never see them, while it sees its
    own values on every query, whichever server it lands on. SET LOCAL, SET in a rolled-back
    transaction, and RESET behave as on a direct connection."""
    with primary() as p:
        defaults = p.execute(
            "select current_setting('search_path'), current_setting('statement_timeout'), current_setting('work_mem')"
        ).fetchone()
    probe_q = (
        "select current_setting('application_name'), current_setting('search_path'), "
        "current_setting('statement_timeout'), current_setting('work_mem'), pg_backend_pid(), inet_server_port()"
    )
    a = connect()
    a.execute("set application_name = 'drv_leak_probe'")
    a.execute("set search_path = drv_leak, public")
    a.execute("set statement_timeout = '42s'")
    with a.transaction():
        a.execute("set local work_mem = '7MB'")
    a.execute("begin")
    a.execute("set work_mem = '9MB'")
    a.execute("rollback")
    mine = ("drv_leak_probe", "drv_leak, public", "42s", defaults[2])
    stop = threading.Event()
    a_seen = set()
    a_checks = 0

    def prober():
        nonlocal a_checks
        simple = psycopg.ClientCursor(a)  # simple query protocol too
        while not stop.is_set() or a_checks < 100:
            cur = simple if a_checks % 3 == 0 else a.cursor()
            row = cur.execute(probe_q).fetchone()
            eq(tuple(row[:4]), mine, "the probe client's own settings")
            a_seen.add((row[5], row[4]))
            a_checks += 1
            if a_checks > 2000:
                break

    def other(k):
        name = f"drv_other_{k}" if k % 2 else ""
        seen = set()
        with connect(application_name=name) if name else connect() as c:
            for i in range(30):
                cur = psycopg.ClientCursor(c) if i % 4 == 0 else c.cursor()
                row = cur.execute(probe_q).fetchone()
                eq(tuple(row[:4]), (name, *defaults), f"client {k} query {i} sees")
                seen.add((row[5], row[4]))
        return seen

    with ThreadPoolExecutor(max_workers=21) as ex:
        pf = ex.submit(prober)
        others = [ex.submit(other, k) for k in range(20)]
        try:
            seen = set().union(*[f.result() for f in others])
        finally:
            stop.set()
        pf.result()
    check(len(a_seen) >= 2, f"the probe client stayed on one server ({a_seen}): replay untested")
    check(len(seen & a_seen) > 0, "no other client shared a server with the probe client")
    a.execute("reset all")
    eq(tuple(a.execute(probe_q).fetchone()[:4]), ("", *defaults), "after RESET ALL")
    a.close()
    return f"probe client saw {len(a_seen)} servers, {a_checks} checks"


@test
def set_config_pins_and_does_not_leak():
    """set_config(name, value, false) outside a transaction changes the session like SET does
    (pgshift pins the client): the client keeps seeing its value; other clients on the primary
    (they run in transactions) never see it, neither while it is connected nor after it left."""
    probe = "select current_setting('application_name'), pg_backend_pid()"
    a = connect()
    eq(a.execute("select set_config('application_name', 'drv_setcfg', false)").fetchone()[0], "drv_setcfg", "")
    pid = a.execute("select pg_backend_pid()").fetchone()[0]

    def other(k):
        seen = []
        with connect() as c:
            for _ in range(10):
                with c.transaction():
                    seen.append(tuple(c.execute(probe).fetchone()))
        return seen

    seen = [r for rs in parallel(2 * POOL_SIZE, other) for r in rs]
    for i in range(10):
        eq(tuple(a.execute(probe).fetchone()), ("drv_setcfg", pid), "the client's own value and server")
    check(all(r[0] == "" for r in seen), f"others saw {sorted(set(seen))}")
    a.close()  # leaves application_name set on its server session
    time.sleep(0.2)
    # POOL_SIZE transactions at once hold every primary connection
    conns = [connect() for _ in range(POOL_SIZE)]
    try:
        for c in conns:
            c.execute("begin")
        after = [tuple(c.execute(probe).fetchone()) for c in conns]
    finally:
        for c in conns:
            c.close()
    leaked = [r for r in after if r[0] != ""]
    check(not leaked, f"after the set_config client left, later clients saw application_name {leaked}")


@test
def listen_notify():
    """LISTEN on one connection, NOTIFY / pg_notify from others: delivered while the listener is
    idle and while it runs queries, with unrelated traffic meanwhile; not delivered to a client
    that does not listen, nor after UNLISTEN."""
    listener = connect()
    bystander = connect()
    first = connect()
    first.execute("select 1")
    # As on a direct connection, a NOTIFY committed after LISTEN returned must be delivered.
    listener.execute("listen drv_chan")
    first.execute("notify drv_chan, 'right-after-listen'")
    first.close()
    got = [x.payload for x in listener.notifies(timeout=5, stop_after=1)]
    eq(got, ["right-after-listen"], "a notification sent right after LISTEN returned")
    bystander.execute("select 1")
    stop = threading.Event()

    def churn(k):
        with connect() as c:
            while not stop.is_set():
                c.execute("select %s::int", (k,), prepare=True)
        return 0

    with ThreadPoolExecutor(max_workers=8) as ex:
        churners = [ex.submit(churn, k) for k in range(6)]
        try:
            with connect() as n:
                for i in range(3):
                    n.execute(f"notify drv_chan, 'hello-{i}'")
                n.execute("select pg_notify('drv_chan', %s)", ("param-3",))
                with n.transaction():
                    n.execute("notify drv_chan, 'in-tx-4'")
                with n.transaction():
                    n.execute("notify drv_chan, 'rolled-back'")
                    raise psycopg.Rollback()
            got = [x.payload for x in listener.notifies(timeout=5, stop_after=5)]
            eq(got, ["hello-0", "hello-1", "hello-2", "param-3", "in-tx-4"], "notifications")
            for i in range(20):
                eq(listener.execute("select %s::int", (i,)).fetchone()[0], i, f"listener query {i}")
            with connect() as n:
                n.execute("notify drv_chan, 'after-queries'")
            got = [x.payload for x in listener.notifies(timeout=5, stop_after=1)]
            eq(got, ["after-queries"], "notification after queries")
        finally:
            stop.set()
            for f in churners:
                f.result()
    eq([x.payload for x in bystander.notifies(timeout=0.5)], [], "notifications of a client that does not listen")
    listener.execute("unlisten drv_chan")
    with connect() as n:
        n.execute("notify drv_chan, 'after-unlisten'")
    eq([x.payload for x in listener.notifies(timeout=1)], [], "notifications after UNLISTEN")
    listener.close()
    bystander.close()


@test
def session_features_pin_and_do_not_leak():
    """Temp table, SQL PREPARE, WITH HOLD cursor, a session advisory lock, LISTEN in a transaction
    and SET ROLE each pin their client to one server for the rest of its session (every query sees them, under load); after the
    client disconnects, no later client sees its leftovers, and the advisory lock is released."""
    stop = threading.Event()

    def churn(k):
        n = 0
        with connect() as c:
            while not stop.is_set():
                c.execute("select %s::int, pg_backend_pid()", (k,), prepare=True)
                n += 1
        return n

    def pinned_client(kind):
        with connect() as c:
            if kind == "temp":
                c.execute("create temp table drv_tmp (x int)")
                pid = c.execute("select pg_backend_pid()").fetchone()[0]
                for i in range(40):
                    c.execute("insert into drv_tmp values (%s)", (i,))
                    eq(c.execute("select count(*), pg_backend_pid() from drv_tmp").fetchone(), (i + 1, pid), "temp")
            elif kind == "prepare":
                c.execute("prepare drv_sqlprep (int) as select $1 * 3, pg_backend_pid()")
                pid = c.execute("select pg_backend_pid()").fetchone()[0]
                for i in range(40):
                    eq(c.execute(f"execute drv_sqlprep({i})").fetchone(), (i * 3, pid), "sql prepare")
            elif kind == "hold":
                cur = c.cursor("drv_hold", withhold=True)
                cur.execute("select g from generate_series(1, 400) g")
                pid = c.execute("select pg_backend_pid()").fetchone()[0]
                got = []
                while True:
                    part = cur.fetchmany(10)
                    if not part:
                        break
                    got.extend(r[0] for r in part)
                    eq(c.execute("select pg_backend_pid()").fetchone()[0], pid, "with hold cursor")
                eq(got, list(range(1, 401)), "with hold cursor rows")
            elif kind == "advisory":
                c.execute("select pg_advisory_lock(4242)")
                pid = c.execute("select pg_backend_pid()").fetchone()[0]
                for i in range(20):
                    row = c.execute(
                        "select count(*), pg_backend_pid() from pg_locks where locktype = 'advisory' "
                        "and objid = 4242 and pid = pg_backend_pid() and granted"
                    ).fetchone()
                    eq(row, (1, pid), "advisory lock held by own session")
                # leave the lock held: disconnecting must release it
            elif kind == "listen":
                with c.transaction():  # LISTEN inside a transaction pins (outside, pgshift fans out)
                    c.execute("listen drv_pin_chan")
                pid = c.execute("select pg_backend_pid()").fetchone()[0]
                for i in range(20):
                    eq(c.execute("select pg_listening_channels(), pg_backend_pid()").fetchone(),
                       ("drv_pin_chan", pid), "listening")
                # no UNLISTEN: disconnecting must stop it
            elif kind == "role":
                c.execute("set role drv_low")
                pid = c.execute("select pg_backend_pid()").fetchone()[0]
                for i in range(20):
                    eq(c.execute("select current_user::text, pg_backend_pid()").fetchone(), ("drv_low", pid), "set role")
                # no RESET ROLE: disconnecting must not hand drv_low to the next client
        return pid

    with ThreadPoolExecutor(max_workers=6) as ex:
        churners = [ex.submit(churn, k) for k in range(4)]
        try:
            # at most two pinned at a time: the primary's pool is POOL_SIZE connections
            pids = {}
            for pair in (("temp", "prepare"), ("hold", "advisory"), ("listen", "role")):
                futs = {kind: ex.submit(pinned_client, kind) for kind in pair}
                for kind, f in futs.items():
                    pids[kind] = f.result()
        finally:
            stop.set()
            n = sum(f.result() for f in churners)
    time.sleep(0.3)
    # Later clients, landing on the same server connections, see none of it.
    leftovers = (
        "select to_regclass('drv_tmp') is null, "
        "(select count(*) from pg_prepared_statements where name = 'drv_sqlprep'), "
        "(select count(*) from pg_cursors where name = 'drv_hold'), "
        "(select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()), "
        "(select count(*) from pg_listening_channels()), current_user::text, "
        "pg_backend_pid()"
    )
    problems = set()
    seen = set()
    # POOL_SIZE transactions open at once: each holds a different primary connection.
    conns = [connect() for _ in range(POOL_SIZE)]
    try:
        for c in conns:
            c.execute("begin")
            row = c.execute(leftovers).fetchone()
            seen.add(row[6])
            if row[:6] != (True, 0, 0, 0, 0, "app"):
                problems.add(f"server pid {row[6]}: temp table drv_tmp visible={not row[0]}, "
                             f"SQL-prepared drv_sqlprep={row[1]}, cursor drv_hold={row[2]}, advisory locks={row[3]}, "
                             f"listening channels={row[4]}, current_user={row[5]}")
    finally:
        for c in conns:
            c.close()
    with primary() as p:
        temp = p.execute("select count(*) from pg_class where relname = 'drv_tmp' and relpersistence = 't'").fetchone()[0]
        if temp:
            problems.add(f"temp table drv_tmp still exists in {temp} session(s) after its client left")
        free = p.execute("select pg_try_advisory_lock(4242)").fetchone()[0]
        if free:
            p.execute("select pg_advisory_unlock(4242)")
        else:
            holder = p.execute(
                "select pid from pg_locks where locktype = 'advisory' and objid = 4242 and granted"
            ).fetchone()
            problems.add(f"advisory lock 4242 still held by server pid {holder} after its client left")
    check(not problems, "a pinned client's session state leaked to later clients: " + "; ".join(sorted(problems)))
    return f"pinned pids {pids}, {n} churn queries, later clients checked {len(seen)} primary conns"


ENCODING_PROBE = "select %s::text, chr(26085), current_setting('client_encoding')"
JAPANESE = "\u65e5\u672c\u8a9e \u00e9"  # in EUC_JP too


@test
def client_encoding_as_the_server_spells_it():
    """client_encoding given as a startup parameter (utf-8, unicode, euc-jp), in options, or both
    (the startup parameter wins): pgshift reports what PostgreSQL reports (UTF8, EUC_JP), so
    psycopg picks the same codec, and a non-ASCII text round-trips on every server the client
    lands on."""
    cases = [
        {"client_encoding": "utf-8"},
        {"client_encoding": "unicode"},
        {"client_encoding": "euc-jp"},
        {"options": "-c client_encoding=euc-jp"},
        {"options": "-c client_encoding=latin1", "client_encoding": "utf-8"},
    ]
    seen = {}
    for kw in cases:
        got = {}
        for where, url in (("direct", PRIMARY_URL), ("pgshift", PROXY_URL)):
            with psycopg.connect(url, autocommit=True, prepare_threshold=0, **kw) as c:
                rows = {tuple(c.execute(ENCODING_PROBE, (JAPANESE,), prepare=True).fetchone()) for _ in range(12)}
                got[where] = (c.info.parameter_status("client_encoding"), c.info.encoding, sorted(rows))
        eq(got["pgshift"], got["direct"], f"{kw}: (reported, codec, rows) through pgshift vs direct")
        seen[str(kw)] = got["pgshift"][0]
    eq(got["direct"][2], [(JAPANESE, "\u65e5", "UTF8")], "rows")
    eq(seen[str({"client_encoding": "euc-jp"})], "EUC_JP", "euc-jp reported as")
    return ", ".join(sorted(set(seen.values())))


@test
def saslprep_passwords_log_in():
    """Roles whose SCRAM passwords hold a combining accent or a no-break space log in through
    pgshift (which holds the password as typed) as they do directly: typed as is or already
    normalised; a wrong password is refused with 28P01 both ways."""
    create_sasl_roles()
    for name, pw in SASL_ROLES:
        for typed in (pw, saslprep(pw)):
            for url in (PRIMARY_URL, PROXY_URL):
                with psycopg.connect(url, user=name, password=typed, autocommit=True) as c:
                    eq(c.execute("select current_user::text").fetchone()[0], name, f"{name} typed {typed!r}")
        for url in (PRIMARY_URL, PROXY_URL):
            try:
                psycopg.connect(url, user=name, password=pw + "x").close()
                raise AssertionError(f"{name}: a wrong password was accepted ({url})")
            except psycopg.OperationalError as e:
                check("password authentication failed" in str(e), f"{name}: wrong password: {e}")


def shared_copies():
    """Rows of pg_prepared_statements for SHARED_SQL on the one server connection behind ONE_URL."""
    with psycopg.connect(ONE_URL, autocommit=True) as c:
        q = "select count(*)::int from pg_prepared_statements where statement = %s"
        return c.execute(q, (SHARED_SQL,)).fetchone()[0]


@test
def one_server_statement_per_statement_text():
    """Four clients prepare `select %s::int + 41` (prepare=True: psycopg names it _pg3_N) through
    a pgshift with one server connection, first at once, then one after another (each gone
    before the next): one row for that text in pg_prepared_statements on the server connection.
    Directly, each connection holds its own copy."""
    with psycopg.connect(PRIMARY_URL, autocommit=True) as c:
        eq(c.execute("select %s::int + 41", (1,), prepare=True).fetchone()[0], 42, "direct")
        q = "select count(*)::int from pg_prepared_statements where statement = %s"
        eq(c.execute(q, (SHARED_SQL,)).fetchone()[0], 1, "directly: the statement text as the server sees it")

    def prepare(_):
        c = psycopg.connect(ONE_URL, autocommit=True, prepare_threshold=0)
        eq(c.execute("select %s::int + 41", (1,), prepare=True).fetchone()[0], 42, "through pgshift")
        eq(prepared_count(c), 1, "statements psycopg prepared")
        return c

    conns = parallel(4, prepare)
    at_once = shared_copies()
    for c in conns:
        c.close()
    eq(at_once, 1, "copies on the server after four clients prepared at once")
    for k in range(4):
        prepare(k).close()
    eq(shared_copies(), 1, "copies on the server after four clients prepared in turn")


def own_notifications(url, threshold):
    """What a listening connection's notify handler saw when each statement returned: its own
    notifications (as (payload, sender is this connection)) and then another connection's."""
    out = []
    with psycopg.connect(url, autocommit=True, prepare_threshold=threshold) as c, \
            psycopg.connect(url, autocommit=True) as other:
        seen = []
        c.add_notify_handler(seen.append)
        c.execute("listen drv_own_chan")
        me = c.info.backend_pid

        def step(label, run):
            seen.clear()
            run()
            out.append((label, [(n.channel, n.payload, n.pid == me) for n in seen]))

        step("notify", lambda: c.execute("notify drv_own_chan, 'plain'"))
        step("do", lambda: c.execute("DO $$ BEGIN PERFORM pg_notify('drv_own_chan', 'do'); END $$"))
        step("pg_notify", lambda: c.execute("select pg_notify('drv_own_chan', %s)", ("param",)))
        with c.transaction():
            step("in transaction", lambda: c.execute("notify drv_own_chan, 'tx'"))
            seen.clear()
        out.append(("commit", [(n.channel, n.payload, n.pid == me) for n in seen]))
        # Waiting in notifies() (no statement of its own meanwhile): see the README on why.
        other.execute("notify drv_own_chan, 'other'")
        got = list(c.notifies(timeout=5, stop_after=1))
        out.append(("other", [(n.payload, n.pid == other.info.backend_pid) for n in got]))
    return out


@test
def own_notifications_before_execute_returns():
    """A listening connection's own NOTIFY, pg_notify() in a DO block, select pg_notify(), and a
    NOTIFY committed by `with conn.transaction()` have reached its notify handler by the time the
    statement (or the COMMIT) returns, with Notify.pid == conn.info.backend_pid: through pgshift
    as directly (prepared and not). Another connection's carries that connection's pid."""
    want = [
        ("notify", [("drv_own_chan", "plain", True)]),
        ("do", [("drv_own_chan", "do", True)]),
        ("pg_notify", [("drv_own_chan", "param", True)]),
        ("in transaction", []),
        ("commit", [("drv_own_chan", "tx", True)]),
        ("other", [("other", True)]),
    ]
    for threshold in (None, 0):
        direct = own_notifications(PRIMARY_URL, threshold)
        eq(direct, want, f"directly (prepare_threshold={threshold})")
        eq(own_notifications(PROXY_URL, threshold), direct, f"through pgshift (prepare_threshold={threshold})")


def outcome(fn):
    """(exception class, SQLSTATE) of fn(), or ('returned', value)."""
    try:
        return ("returned", fn())
    except psycopg.Error as e:
        return (type(e).__name__, e.sqlstate)


def signal_a_victim(url):
    """A victim runs pg_sleep(20); another connection cancels it, then terminates it, by the pid
    psycopg reports (conn.info.backend_pid); also an idle victim, and an unknown pid."""
    out = {}
    victim = psycopg.connect(url, autocommit=True)
    admin = psycopg.connect(url, autocommit=True)
    notices = []
    admin.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    pid = victim.info.backend_pid
    sig = "select pg_{}_backend(%s)"
    for kind in ("cancel", "terminate"):
        marker = f"drv_psy_victim_{kind}_{time.monotonic_ns()}"
        got = {}
        t = threading.Thread(target=lambda: got.update(
            r=outcome(lambda: victim.execute(f"select pg_sleep(20) /* {marker} */").fetchone()[0])))
        t.start()
        wait_running(marker)
        out[kind] = admin.execute(sig.format(kind), (pid,)).fetchone()[0]
        t.join(15)
        check(not t.is_alive(), f"{kind}: pg_sleep(20) went on")
        out[f"{kind}: victim"] = got["r"]
        out[f"after {kind}"] = outcome(lambda: victim.execute("select 41 + 1").fetchone()[0])
        out[f"after {kind}: closed"] = victim.closed
    victim.close()
    with psycopg.connect(url, autocommit=True) as idle:
        out["terminate idle"] = admin.execute(sig.format("terminate"), (idle.info.backend_pid,)).fetchone()[0]
        # The session has ended: its next use fails (how depends on when libpq sees the FATAL).
        next_use = outcome(lambda: [idle.execute("select 1") for _ in range(50) if not time.sleep(0.02)])
        out["idle: next use fails"] = next_use[0] in ("AdminShutdown", "OperationalError")
    out["unknown pid"] = admin.execute(sig.format("terminate"), (UNKNOWN_PID,)).fetchone()[0]
    out["unknown pid: notices"] = notices
    admin.close()
    return out


@test
def terminate_and_cancel_a_client_by_its_pid():
    """pg_cancel_backend(victim's backend_pid) cancels its pg_sleep(20) (QueryCanceled, 57014) and
    the victim goes on; pg_terminate_backend ends its session (AdminShutdown, 57P01); both return
    true; an unknown pid returns false with PostgreSQL's WARNING. The same through pgshift (the
    pid is the one pgshift gave the client, the call an unnamed Parse/Bind/Execute batch) as
    directly."""
    direct = signal_a_victim(PRIMARY_URL)
    eq(direct["cancel: victim"], ("QueryCanceled", "57014"), "directly: cancelled")
    eq(direct["terminate: victim"], ("AdminShutdown", "57P01"), "directly: terminated")
    eq(signal_a_victim(PROXY_URL), direct, "through pgshift vs directly")


if __name__ == "__main__":
    main()
