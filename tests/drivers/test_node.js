// node-postgres (pg) through pgshift in transaction pooling mode.
//
// Named queries ({name, text, values}) become named server-side prepared statements, parsed once
// per client connection and then only bound: the shape transaction poolers break. Run alone:
//   tests/drivers/run.sh node
//   node test_node.js [NAME...]   (with PGSHIFT_DRV_* exported, see README.md)
'use strict';

const { Client, Pool } = require('pg');

const PORT = Number(process.env.PGSHIFT_DRV_PORT || 6432);
const PRIMARY_PORT = Number(process.env.PGSHIFT_DRV_PRIMARY_PORT || 5432);
const REPLICA_PORTS = (process.env.PGSHIFT_DRV_REPLICA_PORTS || '').split(/\s+/).filter(Boolean).map(Number);
const POOL_SIZE = Number(process.env.PGSHIFT_DRV_POOL_SIZE || 4);
const TEST_TIMEOUT_MS = 60000;
const base = { host: '127.0.0.1', user: 'app', password: 'app', database: 'app' };
const proxyConfig = { ...base, port: PORT };
const primaryConfig = { ...base, port: PRIMARY_PORT };
// A pgshift with one server connection, to the primary alone (run.sh).
const oneConfig = { ...base, port: Number(process.env.PGSHIFT_DRV_ONE_PORT || PORT) };
// Same list as run.sh SASL_ROLES: a combining acute accent, a no-break space.
const SASL_ROLES = [['drv_sasl_accent', 'cafe\u0301-pw'], ['drv_sasl_nbsp', 'open\u00a0sesame']];
const SHARED_SQL = 'select $1::int + 41';

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function eq(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`);
}
function check(cond, msg) {
  if (!cond) throw new Error(msg);
}
async function connect(config = proxyConfig) {
  const c = new Client(config);
  await c.connect();
  return c;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Waits until every replica replayed the primary's WAL insert position (any client's commits).
async function syncReplicas() {
  if (!REPLICA_PORTS.length) return;
  const p = await connect({ ...base, port: PRIMARY_PORT });
  const lsn = (await p.query('select pg_current_wal_insert_lsn()::text as l')).rows[0].l;
  await p.end();
  for (const port of REPLICA_PORTS) {
    const r = await connect({ ...base, port });
    try {
      for (let i = 0; ; i++) {
        const ok = (await r.query('select pg_last_wal_replay_lsn() >= $1::pg_lsn as ok', [lsn])).rows[0].ok;
        if (ok) break;
        if (i > 500) throw new Error(`replica ${port} did not replay ${lsn}`);
        await sleep(20);
      }
    } finally {
      await r.end();
    }
  }
}

// seen: Set of "port:pid" strings; at most POOL_SIZE server connections per backend.
function checkMultiplexing(seen, nclients, what) {
  const byPort = {};
  for (const s of seen) {
    const [port, pid] = s.split(':');
    (byPort[port] = byPort[port] || new Set()).add(pid);
  }
  let total = 0;
  for (const [port, pids] of Object.entries(byPort)) {
    check(pids.size <= POOL_SIZE, `${what}: ${pids.size} server connections on port ${port}, pool is ${POOL_SIZE}`);
    total += pids.size;
  }
  if (nclients > POOL_SIZE * (1 + REPLICA_PORTS.length)) {
    check(total < nclients, `${what}: ${nclients} clients used ${total} server connections: no multiplexing?`);
  }
  return Object.fromEntries(Object.entries(byPort).map(([p, s]) => [p, s.size]));
}

const QUERIES = [
  ['select $1::int * 2 as v, pg_backend_pid() as pid, inet_server_port() as port', (i) => i * 2],
  ['select $1::int + 1000 as v, pg_backend_pid() as pid, inet_server_port() as port', (i) => i + 1000],
  ['select (count(*) + $1)::int as v, pg_backend_pid() as pid, inet_server_port() as port from drv_node_items where grp = 3', (i) => 100 + i],
  ["select v || $1::text as v, pg_backend_pid() as pid, inet_server_port() as port from drv_node_items where id = 7", (i) => `item-7${i}`],
];

test('schema_through_proxy', async () => {
  const c = await connect();
  try {
    await c.query(`
      drop table if exists drv_node_items, drv_node_tx;
      create table drv_node_items (id int primary key, grp int not null, v text not null);
      insert into drv_node_items select i, i % 10, 'item-' || i from generate_series(0, 999) i;
      create table drv_node_tx (id int primary key, v text);`);
  } finally {
    await c.end();
  }
  await syncReplicas();
});

test('named_queries_concurrent_clients', async () => {
  // 12 clients; the same query names ('q0'..'q3') mean different SQL on different clients.
  const nclients = 12;
  const iters = 40;
  const seenBy = await Promise.all(
    Array.from({ length: nclients }, async (_, k) => {
      const c = await connect();
      const seen = new Set();
      try {
        for (let it = 0; it < iters; it++) {
          for (let j = 0; j < 4; j++) {
            const [text, want] = QUERIES[(j + k) % 4];
            const i = k * 1000 + it;
            const r = await c.query({ name: `q${j}`, text, values: [i] });
            eq(r.rows[0].v, want(i), `client ${k} q${j}`);
            seen.add(`${r.rows[0].port}:${r.rows[0].pid}`);
          }
        }
      } finally {
        await c.end();
      }
      return seen;
    }),
  );
  const all = new Set(seenBy.flatMap((s) => [...s]));
  const perPort = checkMultiplexing(all, nclients, 'named queries');
  check(seenBy.some((s) => s.size > 1), 'no client moved between server connections');
  return `server conns per port ${JSON.stringify(perPort)}`;
});

test('pool_200_named_queries', async () => {
  const pool = new Pool({ ...proxyConfig, max: 10 });
  try {
    const rs = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        pool.query({ name: 'pooled', text: 'select $1::int * 3 as v, pg_backend_pid() as pid, inet_server_port() as port', values: [i] }),
      ),
    );
    rs.forEach((r, i) => eq(r.rows[0].v, i * 3, `pooled query ${i}`));
    return `server conns per port ${JSON.stringify(checkMultiplexing(new Set(rs.map((r) => `${r.rows[0].port}:${r.rows[0].pid}`)), 10, 'pg.Pool'))}`;
  } finally {
    await pool.end();
  }
});

test('transactions_with_named_queries', async () => {
  const nclients = 8;
  await Promise.all(
    Array.from({ length: nclients }, async (_, k) => {
      const c = await connect();
      try {
        for (let r = 0; r < 5; r++) {
          const id = 1000 + k * 100 + r;
          await c.query('BEGIN');
          await c.query({ name: 'ins', text: 'insert into drv_node_tx (id, v) values ($1, $2)', values: [id, 'kept'] });
          const n = await c.query({ name: 'cnt', text: 'select count(*)::int as n from drv_node_tx where id = $1', values: [id] });
          eq(n.rows[0].n, 1, 'row visible inside its transaction');
          await c.query('COMMIT');
          await c.query('BEGIN');
          await c.query({ name: 'ins', text: 'insert into drv_node_tx (id, v) values ($1, $2)', values: [id + 50, 'rolled back'] });
          await c.query('ROLLBACK');
        }
      } finally {
        await c.end();
      }
    }),
  );
  const p = await connect({ ...base, port: PRIMARY_PORT });
  try {
    const r = await p.query('select v, count(*)::int as n from drv_node_tx where id >= 1000 group by v order by v');
    eq(r.rows, [{ v: 'kept', n: nclients * 5 }], 'committed rows');
  } finally {
    await p.end();
  }
});

test('error_recovery', async () => {
  const nclients = 8;
  await Promise.all(
    Array.from({ length: nclients }, async (_, k) => {
      const c = await connect();
      try {
        for (let r = 0; r < 10; r++) {
          // a named statement whose execution fails (Parse succeeds), then reused
          try {
            await c.query({ name: 'div', text: 'select 10 / $1::int as v', values: [0] });
            throw new Error('no division_by_zero');
          } catch (e) {
            eq(e.code, '22012', 'division by zero sqlstate');
          }
          eq((await c.query({ name: 'div', text: 'select 10 / $1::int as v', values: [5] })).rows[0].v, 2, 'reuse after error');
          // a syntax error (simple query), then the connection goes on
          try {
            await c.query('selec 1');
            throw new Error('no syntax error');
          } catch (e) {
            eq(e.code, '42601', 'syntax error sqlstate');
          }
          // an error inside a transaction: 25P02 until ROLLBACK
          await c.query('BEGIN');
          try {
            await c.query({ name: 'nosuch', text: 'select * from drv_no_such_table where x = $1', values: [1] });
            throw new Error('no undefined_table');
          } catch (e) {
            eq(e.code, '42P01', 'undefined table sqlstate');
          }
          try {
            await c.query({ name: 'div', text: 'select 10 / $1::int as v', values: [1] });
            throw new Error('no in_failed_sql_transaction');
          } catch (e) {
            eq(e.code, '25P02', 'in failed transaction sqlstate');
          }
          await c.query('ROLLBACK');
          eq((await c.query({ name: 'div', text: 'select 10 / $1::int as v', values: [2] })).rows[0].v, 5, 'after rollback');
        }
      } finally {
        await c.end();
      }
    }),
  );
});

test('listen_notify', async () => {
  const listener = await connect();
  const got = [];
  listener.on('notification', (m) => got.push(m.payload));
  const n = await connect();
  try {
    // As on a direct connection, NOTIFYs committed after LISTEN returned must all be delivered.
    await listener.query('LISTEN drv_node_chan');
    try {
      for (let i = 0; i < 3; i++) await n.query(`NOTIFY drv_node_chan, 'n${i}'`);
      await n.query({ name: 'notify', text: 'select pg_notify($1, $2)', values: ['drv_node_chan', 'n3'] });
    } finally {
      await n.end();
    }
    for (let i = 0; i < 250 && got.length < 4; i++) await sleep(20);
    eq(got, ['n0', 'n1', 'n2', 'n3'], 'notifications');
  } finally {
    await listener.end();
  }
});

test('listen_notify_after_a_pause', async () => {
  // The same with 500 ms between LISTEN and the first NOTIFY (delivery itself, apart from timing).
  const listener = await connect();
  const got = [];
  listener.on('notification', (m) => got.push(m.payload));
  const n = await connect();
  try {
    await listener.query('LISTEN drv_node_chan2');
    await sleep(500);
    for (let i = 0; i < 3; i++) await n.query(`NOTIFY drv_node_chan2, 'p${i}'`);
    for (let i = 0; i < 250 && got.length < 3; i++) await sleep(20);
    eq(got, ['p0', 'p1', 'p2'], 'notifications');
  } finally {
    await n.end();
    await listener.end();
  }
});

// The ParameterStatus values a client received at login (node-postgres keeps none itself).
async function loginStatus(config) {
  const c = new Client(config);
  const status = {};
  c.connection.on('parameterStatus', (m) => {
    status[m.parameterName] = m.parameterValue;
  });
  await c.connect();
  return { c, status };
}

test('client_encoding_as_the_server_spells_it', async () => {
  // node-postgres sends no client_encoding of its own (it decodes UTF-8); through options it can.
  const seen = [];
  for (const extra of [{}, { client_encoding: 'utf-8' }, { options: '-c client_encoding=unicode' }]) {
    const got = {};
    for (const [where, config] of [['direct', primaryConfig], ['pgshift', proxyConfig]]) {
      const { c, status } = await loginStatus({ ...config, ...extra });
      try {
        const rows = new Set();
        for (let i = 0; i < 12; i++) {
          const r = await c.query({
            text: "select $1::text as t, chr(26085) as ch, current_setting('client_encoding') as enc",
            values: ['\u65e5\u672c\u8a9e \u00e9'],
          });
          rows.add(JSON.stringify(r.rows[0]));
        }
        got[where] = [status.client_encoding, [...rows].sort()];
      } finally {
        await c.end();
      }
    }
    eq(got.pgshift, got.direct, `${JSON.stringify(extra)}: (reported, rows) through pgshift vs direct`);
    seen.push(got.pgshift[0]);
  }
  eq(seen, ['UTF8', 'UTF8', 'UTF8'], 'client_encoding reported');
});

test('saslprep_passwords_log_in', async () => {
  const p = await connect(primaryConfig);
  try {
    await p.query("set password_encryption = 'scram-sha-256'");
    for (const [name, pw] of SASL_ROLES) {
      await p.query(`do $$ begin if not exists (select from pg_roles where rolname = '${name}') then create role ${name} login; end if; end $$`);
      await p.query(`alter role ${name} password '${pw}'`);
      await p.query(`grant all on database app to ${name}`);
    }
  } finally {
    await p.end();
  }
  for (const [name, pw] of SASL_ROLES) {
    for (const config of [primaryConfig, proxyConfig]) {
      const c = await connect({ ...config, user: name, password: pw });
      try {
        eq((await c.query('select current_user::text as u')).rows[0].u, name, `${name} on port ${config.port}`);
      } finally {
        await c.end();
      }
      let err = null;
      try {
        await (await connect({ ...config, user: name, password: pw + 'x' })).end();
      } catch (e) {
        err = e;
      }
      eq(err && err.code, '28P01', `${name}: a wrong password on port ${config.port}`);
    }
  }
});

async function sharedCopies() {
  const c = await connect(oneConfig);
  try {
    const q = 'select count(*)::int as n from pg_prepared_statements where statement = $1';
    return (await c.query(q, [SHARED_SQL])).rows[0].n;
  } finally {
    await c.end();
  }
}

test('one_server_statement_per_statement_text', async () => {
  // Named queries of four clients, through a pgshift with one server connection, at once and
  // then in turn: one row for the text in pg_prepared_statements on the server connection.
  const prepare = async () => {
    const c = await connect(oneConfig);
    eq((await c.query({ name: 'drv_shared', text: SHARED_SQL, values: [1] })).rows[0], { '?column?': 42 }, 'result');
    return c;
  };
  const held = await Promise.all([0, 1, 2, 3].map(prepare));
  const atOnce = await sharedCopies();
  for (const c of held) await c.end();
  eq(atOnce, 1, 'copies on the server after four clients prepared at once');
  for (let k = 0; k < 4; k++) await (await prepare()).end();
  eq(await sharedCopies(), 1, 'copies on the server after four clients prepared in turn');
});

// What a listening client's 'notification' handler saw when each query's promise resolved: its
// own notifications as [payload, sender is this client], then another client's.
async function ownNotifications(config) {
  const out = [];
  const c = await connect(config);
  const other = await connect(config);
  const seen = [];
  c.on('notification', (m) => seen.push(m));
  const mine = (m) => [m.payload, m.processId === c.processID];
  try {
    await c.query('LISTEN drv_node_own');
    const step = async (label, q) => {
      seen.length = 0;
      await c.query(q);
      out.push([label, seen.map(mine)]);
    };
    await step('notify', "NOTIFY drv_node_own, 'plain'");
    await step('do', "DO $$ BEGIN PERFORM pg_notify('drv_node_own', 'do'); END $$");
    await step('pg_notify($1, $2)', { text: 'select pg_notify($1, $2)', values: ['drv_node_own', 'param'] });
    await step('named', { name: 'drv_own_notify', text: 'select pg_notify($1, $2)', values: ['drv_node_own', 'named'] });
    await c.query('BEGIN');
    await step('in transaction', "NOTIFY drv_node_own, 'tx'");
    await step('commit', 'COMMIT');
    // Waiting without a query of its own meanwhile (see the README).
    seen.length = 0;
    await other.query("NOTIFY drv_node_own, 'other'");
    for (let i = 0; i < 250 && !seen.length; i++) await sleep(20);
    out.push(['other', seen.map((m) => [m.payload, m.processId === other.processID])]);
  } finally {
    await c.end();
    await other.end();
  }
  return out;
}

test('own_notifications_before_query_resolves', async () => {
  // A listening client's own NOTIFY, pg_notify() in a DO block, select pg_notify($1, $2) (unnamed
  // and named) and a NOTIFY committed by COMMIT fire 'notification' before the query's promise
  // resolves, with msg.processId === client.processID: through pgshift as directly.
  const direct = await ownNotifications(primaryConfig);
  eq(direct, [
    ['notify', [['plain', true]]],
    ['do', [['do', true]]],
    ['pg_notify($1, $2)', [['param', true]]],
    ['named', [['named', true]]],
    ['in transaction', []],
    ['commit', [['tx', true]]],
    ['other', [['other', true]]],
  ], 'directly');
  eq(await ownNotifications(proxyConfig), direct, 'through pgshift vs directly');
});

// Waits until a statement containing `marker` runs on some node of the bed (pgshift may route a
// read to a replica), so that a cancel or terminate sent next finds it running.
async function waitRunning(marker) {
  const q = "select count(*)::int as n from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() and strpos(query, $1) > 0";
  for (let i = 0; i < 500; i++) {
    for (const port of [PRIMARY_PORT, ...REPLICA_PORTS]) {
      const c = await connect({ ...base, port });
      try {
        if ((await c.query(q, [marker])).rows[0].n) return;
      } finally {
        await c.end();
      }
    }
    await sleep(20);
  }
  throw new Error(`no statement with ${marker} ran within 10 s`);
}

const UNKNOWN_PID = 2147483000;
const outcome = (p) => p.then((r) => ['returned', r.rows[0]], (e) => ['error', e.code || null]);

// A victim runs pg_sleep(20); another client cancels it, then terminates it, by client.processID
// (the calls with the pid as $1: one unnamed Parse/Bind/Describe/Execute/Sync batch).
async function signalVictim(config) {
  const out = {};
  const victim = await connect(config);
  victim.on('error', () => {}); // the terminated session ends with an 'error' event
  const admin = await connect(config);
  const notices = [];
  admin.on('notice', (m) => notices.push([m.severity, m.message]));
  const pid = victim.processID;
  for (const kind of ['cancel', 'terminate']) {
    const marker = `drv_node_victim_${kind}_${Date.now()}`;
    const running = outcome(victim.query(`select pg_sleep(20) /* ${marker} */`));
    await waitRunning(marker);
    out[kind] = (await admin.query(`select pg_${kind}_backend($1)`, [pid])).rows[0][`pg_${kind}_backend`];
    out[`${kind}: victim`] = await running;
    out[`after ${kind}`] = await outcome(victim.query('select 41 + 1 as n'));
  }
  out['unknown pid'] = (await admin.query(`select pg_terminate_backend(${UNKNOWN_PID})`)).rows[0].pg_terminate_backend;
  out['unknown pid: notices'] = notices;
  await admin.end();
  return out;
}

test('terminate_and_cancel_a_client_by_its_pid', async () => {
  // pg_cancel_backend(victim.processID) cancels its pg_sleep(20) (57014) and the victim goes on;
  // pg_terminate_backend ends its session (57P01, then the client is closed); both return true;
  // an unknown pid returns false with PostgreSQL's WARNING. The same through pgshift as directly.
  const direct = await signalVictim(primaryConfig);
  eq([direct['cancel: victim'], direct['terminate: victim']], [['error', '57014'], ['error', '57P01']], 'directly');
  eq(await signalVictim(proxyConfig), direct, 'through pgshift vs directly');
});

async function main() {
  const only = process.argv.slice(2);
  const run = tests.filter((t) => !only.length || only.includes(t.name));
  let passed = 0;
  let failed = 0;
  const t0 = Date.now();
  for (const t of run) {
    const start = Date.now();
    let timer;
    try {
      const timeout = new Promise((_, rej) => {
        timer = setTimeout(() => rej(new Error(`timed out after ${TEST_TIMEOUT_MS} ms`)), TEST_TIMEOUT_MS);
      });
      const note = await Promise.race([t.fn(), timeout]);
      passed++;
      console.log(`ok    ${t.name} (${((Date.now() - start) / 1000).toFixed(1)}s)${note ? `  [${note}]` : ''}`);
    } catch (e) {
      failed++;
      console.log(`FAIL  ${t.name} (${((Date.now() - start) / 1000).toFixed(1)}s): ${e.code ? `[${e.code}] ` : ''}${e.message}`);
      for (const line of String(e.stack || '').split('\n').slice(1, 6)) console.log(`      ${line.trim()}`);
    } finally {
      clearTimeout(timer);
    }
  }
  console.log(`(${((Date.now() - t0) / 1000).toFixed(1)}s)`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
