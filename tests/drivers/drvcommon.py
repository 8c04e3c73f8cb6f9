"""Shared bits of the Python driver suites: settings from run.sh, a tiny test runner, helpers.

Each suite registers tests with @test and calls main(); `python test_x.py NAME...` runs only the
named tests. Output: one line per test, then 'N passed, N failed'; exit status 1 on any failure.
"""

import asyncio
import faulthandler
import inspect
import os
import sys
import threading
import time
import traceback

import psycopg

PORT = int(os.environ.get("PGSHIFT_DRV_PORT", "6432"))
PRIMARY_PORT = int(os.environ.get("PGSHIFT_DRV_PRIMARY_PORT", "5432"))
REPLICA_PORTS = [int(p) for p in os.environ.get("PGSHIFT_DRV_REPLICA_PORTS", "").split()]
POOL_SIZE = int(os.environ.get("PGSHIFT_DRV_POOL_SIZE", "4"))
HOST = "127.0.0.1"
USER = PASSWORD = DB = "app"
PROXY_URL = os.environ.get("DATABASE_URL", f"postgresql://app:app@{HOST}:{PORT}/app")
PRIMARY_URL = f"postgresql://app:app@{HOST}:{PRIMARY_PORT}/app"
TEST_TIMEOUT = float(os.environ.get("PGSHIFT_DRV_TEST_TIMEOUT", "60"))
# A pgshift with one server connection, to the primary alone: what it prepared is all on it.
ONE_PORT = int(os.environ.get("PGSHIFT_DRV_ONE_PORT", str(PORT)))
ONE_URL = f"postgresql://app:app@{HOST}:{ONE_PORT}/app"
# Roles whose SCRAM passwords need SASLprep (run.sh puts the same list in pgshift's config): a
# combining acute accent (composed into U+00E9) and a no-break space (mapped to a space).
SASL_ROLES = [("drv_sasl_accent", "cafe\u0301-pw"), ("drv_sasl_nbsp", "open\u00a0sesame")]
# The statement text several clients prepare (as the server sees it, placeholders as $n).
SHARED_SQL = "select $1::int + 41"

_TESTS = []


def test(fn):
    """Registers a test (a function or a coroutine function, no arguments)."""
    _TESTS.append(fn)
    return fn


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def primary():
    """A direct connection to the bed's primary (not through pgshift), for setup and checks."""
    return psycopg.connect(PRIMARY_URL, autocommit=True)


def saslprep(password):
    """SASLprep of the passwords in SASL_ROLES: non-ASCII spaces to a space, then NFKC."""
    import unicodedata

    return unicodedata.normalize("NFKC", password.replace("\u00a0", " "))


def create_sasl_roles():
    """Creates (or resets) the SASL_ROLES on the primary, SCRAM passwords as typed, and waits until
    the replicas have replayed it."""
    with primary() as c:
        c.execute("set password_encryption = 'scram-sha-256'")
        for name, pw in SASL_ROLES:
            c.execute(
                f"do $$ begin if not exists (select from pg_roles where rolname = '{name}') "
                f"then create role {name} login; end if; end $$"
            )
            c.execute(f"alter role {name} password '{pw}'")
            c.execute(f"grant all on database app to {name}")
    # pgshift may send these roles' reads to a replica: wait until the replicas know them too
    sync_replicas()


def sync_replicas(timeout=10.0):
    """Waits until every replica has replayed the primary's current WAL insert position, so that
    a read routed to a replica sees what any client just committed (read-your-writes covers only
    the client's own writes). The insert position, not pg_current_wal_lsn(): with
    synchronous_commit = off (the bed) a commit returns before its WAL is written."""
    if not REPLICA_PORTS:
        return
    with primary() as c:
        lsn = c.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]
    deadline = time.monotonic() + timeout
    for port in REPLICA_PORTS:
        with psycopg.connect(f"postgresql://app:app@{HOST}:{port}/app", autocommit=True) as c:
            while not c.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"replica {port} did not replay {lsn} in {timeout}s")
                time.sleep(0.02)


# A pid no PostgreSQL backend and no pgshift client has (pgshift's client pids are above 4194304).
UNKNOWN_PID = 2147483000


def wait_running(marker, timeout=10.0):
    """Waits until a statement containing `marker` is running on some node of the bed (the
    primary or a replica: pgshift may route a read to either), so that a cancel or terminate
    sent next finds it running."""
    deadline = time.monotonic() + timeout
    q = ("select count(*)::int from pg_stat_activity "
         "where state = 'active' and pid <> pg_backend_pid() and strpos(query, %s) > 0")
    while True:
        for port in [PRIMARY_PORT, *REPLICA_PORTS]:
            with psycopg.connect(f"postgresql://app:app@{HOST}:{port}/app", autocommit=True) as c:
                if c.execute(q, (marker,)).fetchone()[0]:
                    return
        if time.monotonic() > deadline:
            raise AssertionError(f"no statement with {marker!r} ran within {timeout}s")
        time.sleep(0.02)


def check_multiplexing(seen, nclients, what):
    """seen: set of (server_port, backend_pid) a test's clients observed. Each backend has a pool
    of POOL_SIZE connections: more distinct pids than that on one port means pgshift opened extra
    connections (or replaced broken ones); more clients than the pools hold must share."""
    by_port = {}
    for port, pid in seen:
        by_port.setdefault(port, set()).add(pid)
    for port, pids in by_port.items():
        check(len(pids) <= POOL_SIZE, f"{what}: {len(pids)} server connections on port {port}, pool is {POOL_SIZE}")
    total = sum(len(p) for p in by_port.values())
    if nclients > POOL_SIZE * (1 + len(REPLICA_PORTS)):
        check(total < nclients, f"{what}: {nclients} clients used {total} server connections: no multiplexing?")
    return {port: len(pids) for port, pids in sorted(by_port.items())}


def check_primary_pool_free(release, what, timeout=5.0):
    """Checks that every primary server connection can be had: POOL_SIZE clients open
    transactions at once (transactions go to the primary) within `timeout`. If one cannot, some
    idle client kept its server connection: release() (closing that client) unblocks it, and the
    check fails."""
    conns = [psycopg.connect(PROXY_URL, autocommit=True) for _ in range(POOL_SIZE)]
    done = []

    def hold(c):
        c.execute("begin")
        c.execute("select txid_current()")
        done.append(c)

    threads = [threading.Thread(target=hold, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    got = len(done)
    ok = got == POOL_SIZE
    if not ok:
        release()
        for t in threads:
            t.join(10)
    for c in conns:
        c.close()
    check(ok, f"{what}: only {got} of the primary's {POOL_SIZE} server connections could be had "
              f"within {timeout:.0f}s: an idle client kept its server connection")


def main():
    only = sys.argv[1:]
    tests = [t for t in _TESTS if not only or t.__name__ in only]
    if only and len(tests) != len(only):
        known = " ".join(t.__name__ for t in _TESTS)
        print(f"unknown test name(s) in {only}; known: {known}")
        sys.exit(2)
    passed = failed = 0
    t_all = time.monotonic()
    for fn in tests:
        t0 = time.monotonic()
        # A hung test dumps every thread's stack and ends the suite (better than a silent hang).
        faulthandler.dump_traceback_later(TEST_TIMEOUT + 5, exit=True)
        try:
            if inspect.iscoroutinefunction(fn):
                note = asyncio.run(asyncio.wait_for(fn(), TEST_TIMEOUT))
            else:
                note = fn()
            passed += 1
            extra = f"  [{note}]" if note else ""
            print(f"ok    {fn.__name__} ({time.monotonic() - t0:.1f}s){extra}", flush=True)
        except BaseException as e:  # noqa: BLE001 - report everything, including timeouts
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            print(f"FAIL  {fn.__name__} ({time.monotonic() - t0:.1f}s): {type(e).__name__}: {e}", flush=True)
            for line in traceback.format_exc().rstrip().splitlines():
                print(f"      {line}")
        finally:
            faulthandler.cancel_dump_traceback_later()
    print(f"({time.monotonic() - t_all:.1f}s)")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
