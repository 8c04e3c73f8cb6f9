"""asyncpg through pgshift in transaction pooling mode.

asyncpg prepares every query as a named statement (__asyncpg_stmt_N__, kept in a per-connection
cache) and describes it before binding: the classic "prepared statement does not exist" shape.
Run alone:
    tests/drivers/run.sh asyncpg
    .venv/bin/python test_asyncpg.py NAME   (with PGSHIFT_DRV_* exported, see README.md)
"""

import asyncio
import io
import time

import asyncpg

from drvcommon import (
    ONE_URL,
    POOL_SIZE,
    PRIMARY_URL,
    PROXY_URL,
    SASL_ROLES,
    SHARED_SQL,
    UNKNOWN_PID,
    create_sasl_roles,
    saslprep,
    check_primary_pool_free,
    check,
    check_multiplexing,
    eq,
    main,
    primary,
    sync_replicas,
    test,
    wait_running,
)


async def connect(**kw):
    return await asyncpg.connect(PROXY_URL, **kw)


@test
async def schema_through_proxy():
    c = await connect()
    try:
        await c.execute(
            """
            drop table if exists drv_apg_items, drv_apg_many, drv_apg_copy;
            create table drv_apg_items (id int primary key, grp int not null, v text not null);
            insert into drv_apg_items select i, i % 10, 'item-' || i from generate_series(0, 999) i;
            create table drv_apg_many (id int primary key, grp int not null, v text);
            create table drv_apg_copy (id int primary key, t text, n numeric, ts timestamptz, b bytea);
            """
        )
    finally:
        await c.close()
    await asyncio.to_thread(sync_replicas)


QUERIES = [
    ("select $1::int * 2, pg_backend_pid(), inet_server_port()", lambda i: i * 2),
    ("select $1::int + 1000, pg_backend_pid(), inet_server_port()", lambda i: i + 1000),
    ("select count(*)::int + $1, pg_backend_pid(), inet_server_port() from drv_apg_items where grp = 3", lambda i: 100 + i),
    ("select v || $1::int::text, pg_backend_pid(), inet_server_port() from drv_apg_items where id = 7", lambda i: f"item-7{i}"),
]


@test
async def prepared_statements_across_connections():
    """12 connections: conn.prepare() statements reused 40 times, and conn.fetch() with args
    (asyncpg's statement cache), in different orders on each connection."""
    nclients, iters = 12, 40

    async def worker(k):
        seen = set()
        c = await connect()
        try:
            order = QUERIES[k % 4 :] + QUERIES[: k % 4]
            stmts = [(await c.prepare(q), want) for q, want in order]
            for it in range(iters):
                i = k * 1000 + it
                for st, want in stmts:
                    row = await st.fetchrow(i)
                    eq(row[0], want(i), f"conn {k} prepared")
                    seen.add((row[2], row[1]))
                q, want = order[it % 4]
                row = (await c.fetch(q, i))[0]
                eq(row[0], want(i), f"conn {k} fetch")
                seen.add((row[2], row[1]))
                eq(await c.fetchval("select $1::text || $2::text", "a", str(i)), f"a{i}", "fetchval")
        finally:
            await c.close()
        return seen

    seen_by = await asyncio.gather(*(worker(k) for k in range(nclients)))
    per_port = check_multiplexing(set().union(*seen_by), nclients, "asyncpg prepared")
    check(any(len(s) > 1 for s in seen_by), "no connection moved between servers")
    return f"server conns per port {per_port}"


@test
async def prepare_a_read_then_write():
    """conn.prepare() of a read sends Parse/Describe/Flush (no Sync), then the next call writes:
    the write must reach the primary. (The smallest asyncpg shape of copy_records_to_table, which
    prepares an introspection SELECT and then sends COPY FROM STDIN.)"""
    c = await connect()
    try:
        for i in range(5):
            st = await c.prepare(f"select count(*) + {i} from drv_apg_items")
            await c.execute(f"insert into drv_apg_many (id, grp, v) values ({800000 + i}, 88, 'after prepare')")
            eq(await st.fetchval(), 1000 + i, "prepared read")
    finally:
        await c.close()


@test
async def prepare_then_idle_gives_the_server_back():
    """conn.prepare() sends Parse/Describe/Flush and no Sync; a client that prepared statements
    (say in a pool's init callback) and then sits idle must not keep a server connection."""
    idle = [await connect() for _ in range(POOL_SIZE)]
    try:
        for k, c in enumerate(idle):
            st = await c.prepare(f"insert into drv_apg_many (id, grp, v) values ($1 + {k}, 66, 'prepared')")
            eq(len(st.get_parameters()), 1, "prepared statement parameters")
        loop = asyncio.get_running_loop()

        def release():
            for c in idle:
                asyncio.run_coroutine_threadsafe(c.close(), loop).result(10)

        await asyncio.to_thread(check_primary_pool_free, release, f"{POOL_SIZE} idle clients that prepared a statement")
    finally:
        for c in idle:
            await c.close()


@test
async def small_statement_cache_closes_statements():
    """statement_cache_size=3 with 10 distinct queries: asyncpg keeps evicting and sending Close
    for its statements (answered by pgshift), then re-preparing them."""

    async def worker(k):
        c = await connect(statement_cache_size=3)
        try:
            for it in range(60):
                j = (it * 7 + k) % 10
                eq(await c.fetchval(f"select $1::int + {j}", it), it + j, f"conn {k} it {it}")
        finally:
            await c.close()

    await asyncio.gather(*(worker(k) for k in range(6)))


@test
async def executemany_concurrent():
    nclients, nrows = 8, 300

    async def worker(k):
        c = await connect()
        try:
            rows = [(k * 10000 + i, i % 7, f"v{k}-{i}") for i in range(nrows)]
            await c.executemany("insert into drv_apg_many (id, grp, v) values ($1, $2, $3)", rows)
            # executemany is atomic: a failing row rolls back the whole batch
            bad = [(k * 10000 + nrows + 1, 1, "x"), (k * 10000, 1, "duplicate")]
            bad += [(k * 10000 + nrows + 2 + i, 1, "after the error") for i in range(200)]
            try:
                await c.executemany("insert into drv_apg_many (id, grp, v) values ($1, $2, $3)", bad)
                raise AssertionError("duplicate key not reported")
            except asyncpg.UniqueViolationError:
                pass
            eq(await c.fetchval("select 1"), 1, "after failed executemany")
        finally:
            await c.close()

    await asyncio.gather(*(worker(k) for k in range(nclients)))
    # Idle clients whose executemany failed must not keep their server connections. Rows of 4 kB:
    # the error reaches pgshift while asyncpg is still sending the batch (usually: three clients).
    failed = [await connect() for _ in range(3)]
    try:
        bad = [(1, 1, "dup"), (1, 1, "dup")] + [(700000 + i, 1, "x" * 4000) for i in range(1000)]
        for c in failed:
            try:
                await c.executemany("insert into drv_apg_many (id, grp, v) values ($1, $2, $3)", bad)
                raise AssertionError("duplicate key not reported")
            except asyncpg.UniqueViolationError:
                pass
            eq(await c.fetchval("select 2"), 2, "after the failed executemany")
        loop = asyncio.get_running_loop()

        def release():
            for c in failed:
                asyncio.run_coroutine_threadsafe(c.close(), loop).result(10)

        await asyncio.to_thread(check_primary_pool_free, release, "after failed executemany calls")
    finally:
        for c in failed:
            await c.close()
    await asyncio.to_thread(sync_replicas)
    c = await connect()
    try:
        row = await c.fetchrow("select count(*), sum(id) from drv_apg_many where grp < 7")
    finally:
        await c.close()
    want = sum(k * 10000 + i for k in range(nclients) for i in range(nrows))
    eq((row[0], row[1]), (nclients * nrows, want), "rows after executemany")


@test
async def copy_records_and_copy_from_query():
    """copy_records_to_table (binary COPY FROM STDIN) and copy_from_query / copy_from_table
    (COPY TO STDOUT) from 4 connections at once."""
    import datetime
    import decimal

    nclients, nrows = 4, 3000
    ts0 = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)

    def records(k):
        return [
            (k * 100000 + i, f"t{i}\t\\ü", decimal.Decimal(i) / 4, ts0 + datetime.timedelta(seconds=i), bytes([i % 256]))
            for i in range(nrows)
        ]

    async def worker(k):
        c = await connect()
        try:
            res = await c.copy_records_to_table(
                "drv_apg_copy", records=records(k), columns=["id", "t", "n", "ts", "b"]
            )
            eq(res, f"COPY {nrows}", f"conn {k} copy_records_to_table")
            async with c.transaction():  # in a transaction: primary, sees the rows
                buf = io.BytesIO()
                res = await c.copy_from_query(
                    "select id, n from drv_apg_copy where id >= $1 and id < $2 order by id",
                    k * 100000, k * 100000 + nrows, output=buf, format="csv",
                )
                eq(res, f"COPY {nrows}", f"conn {k} copy_from_query")
                want = "".join(f"{r[0]},{r[2]}\n" for r in records(k))
                check(buf.getvalue().decode() == want, f"conn {k}: copy_from_query output differs")
                got = await c.fetch("select id, t, n, ts, b from drv_apg_copy where id / 100000 = $1 order by id", k)
                check([tuple(r) for r in got] == records(k), f"conn {k}: rows differ from the records copied in")
        finally:
            await c.close()

    await asyncio.gather(*(worker(k) for k in range(nclients)))
    await asyncio.to_thread(sync_replicas)
    c = await connect()
    try:
        buf = io.BytesIO()
        res = await c.copy_from_table("drv_apg_copy", columns=["id"], output=buf)
        eq(res, f"COPY {nclients * nrows}", "copy_from_table")
        eq(len(buf.getvalue().split()), nclients * nrows, "copy_from_table lines")
    finally:
        await c.close()


@test
async def cancel_via_timeout():
    """asyncio.wait_for timeout on pg_sleep(10): asyncpg sends a CancelRequest (through pgshift)
    and waits for the query to end; the connection then works, with its prepared statements.
    Also the timeout= argument, and a cancel inside a transaction."""
    c = await connect()
    try:
        st = await c.prepare("select $1::int * 3")
        for how in ("wait_for", "timeout_arg", "in_tx"):
            t0 = time.monotonic()
            tr = None
            try:
                if how == "wait_for":
                    await asyncio.wait_for(c.fetch("select pg_sleep(10)"), timeout=0.5)
                elif how == "timeout_arg":
                    await c.execute("select pg_sleep(10)", timeout=0.5)
                else:
                    tr = c.transaction()
                    await tr.start()
                    await c.execute("select pg_sleep(10)", timeout=0.5)
                raise AssertionError(f"{how}: pg_sleep(10) was not interrupted")
            except (asyncio.TimeoutError, TimeoutError):
                pass
            took = time.monotonic() - t0
            if tr is not None:
                await tr.rollback()
            check(took < 5, f"{how}: took {took:.1f}s: the cancel did not reach the server")
            eq(await c.fetchval("select 7"), 7, f"after {how}")
            for i in range(10):
                eq(await st.fetchval(i), i * 3, f"prepared after {how}")
            check(not c.is_in_transaction(), f"{how}: still in a transaction")
    finally:
        await c.close()


@test
async def pool_of_ten_500_queries():
    """asyncpg.create_pool(10 connections) running 500 queries at once (acquire/release resets
    each connection with asyncpg's reset query), prepared statements with args."""
    pool = await asyncpg.create_pool(PROXY_URL, min_size=10, max_size=10)
    try:
        async def one(i):
            async with pool.acquire() as c:
                row = await c.fetchrow(
                    "select $1::int * 2 as v, pg_backend_pid() as pid, inet_server_port() as port, "
                    "current_setting('application_name') as app", i
                )
                eq(row["v"], i * 2, f"query {i}")
                return (row["port"], row["pid"])

        seen = await asyncio.gather(*(one(i) for i in range(500)))
        vals = await asyncio.gather(*(pool.fetchval("select $1::int + 1", i) for i in range(100)))
        eq(vals, [i + 1 for i in range(100)], "pool.fetchval")
    finally:
        await asyncio.wait_for(pool.close(), 10)
    per_port = check_multiplexing(set(seen), 10, "asyncpg pool")
    return f"server conns per port {per_port}"


@test
async def transactions_and_errors():
    """Transactions with prepared statements: an error rolls back, the connection recovers;
    savepoints (nested transaction()); read-only transactions."""

    async def worker(k):
        base = 900000 + k * 100
        c = await connect()
        try:
            ins = await c.prepare("insert into drv_apg_many (id, grp, v) values ($1, 77, $2)")
            for r in range(5):
                try:
                    async with c.transaction():
                        await ins.fetch(base + r, "doomed")
                        await c.fetchval("select 1/0")
                    raise AssertionError("no error")
                except asyncpg.DivisionByZeroError:
                    pass
                async with c.transaction():
                    await ins.fetch(base + 10 + r, "kept")
                    try:
                        async with c.transaction():  # savepoint
                            await ins.fetch(base + 10 + r, "dup")
                    except asyncpg.UniqueViolationError:
                        pass
                async with c.transaction(readonly=True):
                    eq(await c.fetchval("select count(*) from drv_apg_items where grp = $1", 2), 100, "read only tx")
        finally:
            await c.close()

    await asyncio.gather(*(worker(k) for k in range(6)))

    def check_rows():
        with primary() as p:
            return p.execute("select v, count(*) from drv_apg_many where grp = 77 group by v").fetchall()

    eq(await asyncio.to_thread(check_rows), [("kept", 30)], "committed rows")


@test
async def advisory_lock_pins_the_connection():
    """pg_advisory_lock then pg_advisory_unlock on the same connection under load: the lock is
    held by the client's own server session throughout (others cannot take it), and released."""
    holder = await connect()
    other = await connect()
    stop = asyncio.Event()

    async def churn(k):
        c = await connect()
        n = 0
        try:
            while not stop.is_set():
                await c.fetchval("select $1::int", k)
                n += 1
        finally:
            await c.close()
        return n

    churners = [asyncio.create_task(churn(k)) for k in range(8)]
    try:
        await holder.execute("select pg_advisory_lock(7777)")
        pid = await holder.fetchval("select pg_backend_pid()")
        for i in range(30):
            row = await holder.fetchrow(
                "select count(*) as n, pg_backend_pid() as pid from pg_locks where locktype = 'advisory' "
                "and objid = 7777 and granted and pid = pg_backend_pid()"
            )
            eq((row["n"], row["pid"]), (1, pid), f"holder query {i}")
            if i % 10 == 0:
                async with other.transaction():
                    eq(await other.fetchval("select pg_try_advisory_xact_lock(7777)"), False, "lock taken by other")
        eq(await holder.fetchval("select pg_advisory_unlock(7777)"), True, "unlock on the same session")
        async with other.transaction():
            eq(await other.fetchval("select pg_try_advisory_xact_lock(7777)"), True, "lock free after unlock")
    finally:
        stop.set()
        n = sum(await asyncio.gather(*churners))
        await holder.close()
        await other.close()
    return f"{n} churn queries meanwhile"


@test
async def listen_with_add_listener():
    """conn.add_listener (LISTEN); NOTIFY from other connections arrives, also while the listener
    runs queries."""
    listener = await connect()
    got = asyncio.Queue()
    await listener.add_listener("drv_apg_chan", lambda *args: got.put_nowait(args[3]))
    try:
        eq(await listener.fetchval("select 5"), 5, "listener query")
        other = await connect()
        try:
            for i in range(3):
                await other.execute(f"notify drv_apg_chan, 'a{i}'")
            await other.fetchval("select pg_notify($1, $2)", "drv_apg_chan", "a3")
        finally:
            await other.close()
        payloads = [await asyncio.wait_for(got.get(), 5) for _ in range(4)]
        eq(payloads, ["a0", "a1", "a2", "a3"], "notifications")
        eq(await listener.fetchval("select $1::int", 6), 6, "listener query after notifications")
    finally:
        await listener.close()


JAPANESE = "\u65e5\u672c\u8a9e \u00e9"  # in EUC_JP too


@test
async def client_encoding_as_the_server_spells_it():
    """asyncpg sends client_encoding 'utf-8' itself, and again when server_settings names it (the
    last one counts): pgshift reports what PostgreSQL reports, so asyncpg picks the same codec,
    and a non-ASCII text round-trips on every server the connection lands on."""
    seen = []
    for ss in (None, {"client_encoding": "unicode"}, {"client_encoding": "euc-jp"}):
        got = {}
        for where, url in (("direct", PRIMARY_URL), ("pgshift", PROXY_URL)):
            c = await asyncpg.connect(url, server_settings=ss)
            try:
                q = "select $1::text, chr(26085), current_setting('client_encoding')"
                rows = {tuple(await c.fetchrow(q, JAPANESE)) for _ in range(12)}
                got[where] = (c.get_settings().client_encoding, sorted(rows))
            finally:
                await c.close()
        eq(got["pgshift"], got["direct"], f"server_settings {ss}: (reported, rows) through pgshift vs direct")
        seen.append(got["pgshift"][0])
    eq(seen, ["UTF8", "UTF8", "EUC_JP"], "client_encoding reported")
    return ", ".join(seen)


@test
async def saslprep_passwords_log_in():
    """Roles whose SCRAM passwords hold a combining accent or a no-break space log in through
    pgshift as they do directly (asyncpg applies SASLprep itself); a wrong password gets 28P01."""
    await asyncio.to_thread(create_sasl_roles)
    for name, pw in SASL_ROLES:
        for typed in (pw, saslprep(pw)):
            for url in (PRIMARY_URL, PROXY_URL):
                c = await asyncpg.connect(url, user=name, password=typed)
                try:
                    eq(await c.fetchval("select current_user::text"), name, f"{name} typed {typed!r}")
                finally:
                    await c.close()
        for url in (PRIMARY_URL, PROXY_URL):
            try:
                await (await asyncpg.connect(url, user=name, password=pw + "x")).close()
                raise AssertionError(f"{name}: a wrong password was accepted ({url})")
            except asyncpg.InvalidPasswordError:
                pass


async def shared_copies():
    """Rows of pg_prepared_statements for SHARED_SQL on the one server connection behind ONE_URL."""
    c = await asyncpg.connect(ONE_URL)
    try:
        return await c.fetchval("select count(*)::int from pg_prepared_statements where statement = $1", SHARED_SQL)
    finally:
        await c.close()


@test
async def one_server_statement_per_statement_text():
    """Four connections prepare SHARED_SQL (asyncpg names it __asyncpg_stmt_N__) through a
    pgshift with one server connection, at once, then one after another (each closed before the
    next): one row for that text in pg_prepared_statements on the server connection."""

    async def prepare():
        c = await asyncpg.connect(ONE_URL)
        st = await c.prepare(SHARED_SQL)
        eq(await st.fetchval(1), 42, "through pgshift")
        return c, st

    held = await asyncio.gather(*(prepare() for _ in range(4)))
    at_once = await shared_copies()
    for c, _ in held:
        await c.close()
    eq(at_once, 1, "copies on the server after four connections prepared at once")
    for _ in range(4):
        c, _ = await prepare()
        await c.close()
    eq(await shared_copies(), 1, "copies on the server after four connections prepared in turn")


async def own_notifications(url):
    """What a listening connection's add_listener callback saw when each statement returned (and
    the loop ran once, as asyncpg dispatches callbacks through it): its own notifications, as
    (payload, sender is this connection), then another connection's."""
    out = []
    c = await asyncpg.connect(url)
    other = await asyncpg.connect(url)
    try:
        seen = []
        await c.add_listener("drv_apg_own", lambda _c, pid, _ch, payload: seen.append((pid, payload)))
        me = c.get_server_pid()

        async def step(label, coro):
            seen.clear()
            await coro
            await asyncio.sleep(0)
            out.append((label, [(p, pid == me) for pid, p in seen]))

        await step("notify", c.execute("notify drv_apg_own, 'plain'"))
        await step("do", c.execute("DO $$ BEGIN PERFORM pg_notify('drv_apg_own', 'do'); END $$"))
        await step("pg_notify($1, $2)", c.fetchval("select pg_notify($1, $2)", "drv_apg_own", "param"))
        seen.clear()
        async with c.transaction():
            await c.execute("notify drv_apg_own, 'tx'")
            await asyncio.sleep(0)
            out.append(("in transaction", list(seen)))
        await asyncio.sleep(0)
        out.append(("commit", [(p, pid == me) for pid, p in seen]))
        seen.clear()
        # Waiting without a statement of its own meanwhile (see the README).
        await other.execute("notify drv_apg_own, 'other'")
        for _ in range(250):
            if seen:
                break
            await asyncio.sleep(0.02)
        out.append(("other", [(p, pid == other.get_server_pid()) for pid, p in seen]))
    finally:
        await c.close()
        await other.close()
    return out


@test
async def own_notifications_before_execute_returns():
    """A listening connection's own NOTIFY, pg_notify() in a DO block, a prepared
    pg_notify($1, $2), and a NOTIFY committed by `async with conn.transaction()` have reached its
    add_listener callback once the statement returned and the loop ran once (asyncio.sleep(0)),
    with pid == conn.get_server_pid(): through pgshift as directly. Another connection's carries
    that connection's pid."""
    direct = await own_notifications(PRIMARY_URL)
    eq(direct, [
        ("notify", [("plain", True)]),
        ("do", [("do", True)]),
        ("pg_notify($1, $2)", [("param", True)]),
        ("in transaction", []),
        ("commit", [("tx", True)]),
        ("other", [("other", True)]),
    ], "directly")
    eq(await own_notifications(PROXY_URL), direct, "through pgshift vs directly")


async def outcome(coro):
    """(exception class, SQLSTATE) of awaiting coro, or ('returned', value)."""
    try:
        return ("returned", await coro)
    except asyncpg.PostgresError as e:
        return (type(e).__name__, e.sqlstate)
    except asyncpg.InterfaceError as e:
        return (type(e).__name__, None)


async def signal_a_victim(url):
    """A victim runs pg_sleep(20); another connection cancels it, then terminates it, by
    conn.get_server_pid(). The calls go as simple queries (execute() without arguments): asyncpg
    prepares anything with arguments in a round trip of its own, which pgshift does not take (a
    prepared call reaches PostgreSQL, which knows no such pid)."""
    out = {}
    victim = await asyncpg.connect(url)
    admin = await asyncpg.connect(url)
    notices = []
    admin.add_log_listener(lambda _c, m: notices.append((m.severity_en or m.severity, m.message)))
    pid = victim.get_server_pid()
    for kind in ("cancel", "terminate"):
        marker = f"drv_apg_victim_{kind}_{time.monotonic_ns()}"
        task = asyncio.ensure_future(outcome(victim.fetchval(f"select pg_sleep(20) /* {marker} */")))
        await asyncio.to_thread(wait_running, marker)
        out[kind] = await admin.execute(f"select pg_{kind}_backend({pid})")
        out[f"{kind}: victim"] = await asyncio.wait_for(task, 15)
        out[f"after {kind}"] = await outcome(victim.fetchval("select 41 + 1"))
        out[f"after {kind}: closed"] = victim.is_closed()
    await victim.close()
    await admin.execute(f"select pg_terminate_backend({UNKNOWN_PID})")
    await asyncio.sleep(0)
    out["unknown pid: notices"] = notices
    await admin.close()
    return out


@test
async def terminate_and_cancel_a_client_by_its_pid():
    """pg_cancel_backend(victim's get_server_pid()) cancels its pg_sleep(20) (QueryCanceledError,
    57014) and the victim goes on; pg_terminate_backend ends its session (asyncpg reports
    ConnectionDoesNotExistError, the connection closed); an unknown pid
    gets PostgreSQL's WARNING. The same through pgshift as directly."""
    direct = await signal_a_victim(PRIMARY_URL)
    eq(direct["cancel: victim"], ("QueryCanceledError", "57014"), "directly: cancelled")
    # asyncpg turns the FATAL 57P01 that ends the session into "connection was closed in the
    # middle of operation".
    eq(direct["terminate: victim"], ("ConnectionDoesNotExistError", "08003"), "directly: terminated")
    eq(await signal_a_victim(PROXY_URL), direct, "through pgshift vs directly")


if __name__ == "__main__":
    main()
