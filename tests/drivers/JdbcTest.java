// pgJDBC (Debian's libpostgresql-jdbc-java) through pgshift in transaction pooling mode.
//
// prepareThreshold=1: every PreparedStatement is a named server statement (S_1, S_2, ...) from its
// first execution; pgJDBC then only binds it, and describes it again without a fresh Parse.
// Run alone: tests/drivers/run.sh jdbc, or (with PGSHIFT_DRV_* exported, see README.md)
//   javac -d /tmp/j -cp /usr/share/java/postgresql.jar JdbcTest.java
//   java -cp /tmp/j:/usr/share/java/postgresql.jar JdbcTest [NAME...]

import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ParameterMetaData;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.Callable;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;

public class JdbcTest {
  static final String HOST = "127.0.0.1";
  static final int PORT = Integer.parseInt(env("PGSHIFT_DRV_PORT", "6432"));
  static final int PRIMARY_PORT = Integer.parseInt(env("PGSHIFT_DRV_PRIMARY_PORT", "5432"));
  static final String[] REPLICA_PORTS = env("PGSHIFT_DRV_REPLICA_PORTS", "").trim().isEmpty()
      ? new String[0] : env("PGSHIFT_DRV_REPLICA_PORTS", "").trim().split("\\s+");
  static final int POOL_SIZE = Integer.parseInt(env("PGSHIFT_DRV_POOL_SIZE", "4"));

  static String env(String k, String d) {
    String v = System.getenv(k);
    return v == null ? d : v;
  }

  static Connection connect() throws SQLException {
    return DriverManager.getConnection(
        "jdbc:postgresql://" + HOST + ":" + PORT + "/app?prepareThreshold=1&user=app&password=app");
  }

  static Connection direct(int port) throws SQLException {
    return DriverManager.getConnection("jdbc:postgresql://" + HOST + ":" + port + "/app?user=app&password=app");
  }

  static void check(boolean cond, String msg) {
    if (!cond) throw new AssertionError(msg);
  }

  static void eq(Object got, Object want, String what) {
    if (got == null ? want != null : !got.equals(want)) {
      throw new AssertionError(what + ": got " + got + ", want " + want);
    }
  }

  /** Waits until every replica replayed the primary's WAL insert position (any client's commits). */
  static void syncReplicas() throws Exception {
    String lsn;
    try (Connection p = direct(PRIMARY_PORT); Statement s = p.createStatement();
        ResultSet rs = s.executeQuery("select pg_current_wal_insert_lsn()::text")) {
      rs.next();
      lsn = rs.getString(1);
    }
    for (String port : REPLICA_PORTS) {
      try (Connection r = direct(Integer.parseInt(port));
          PreparedStatement ps = r.prepareStatement("select pg_last_wal_replay_lsn() >= ?::pg_lsn")) {
        ps.setString(1, lsn);
        for (int i = 0; ; i++) {
          try (ResultSet rs = ps.executeQuery()) {
            rs.next();
            if (rs.getBoolean(1)) break;
          }
          if (i > 500) throw new AssertionError("replica " + port + " did not replay " + lsn);
          Thread.sleep(20);
        }
      }
    }
  }

  /** Runs n tasks at once on n threads; returns their results, rethrowing the first failure. */
  static <T> List<T> parallel(int n, TaskFn<T> fn) throws Exception {
    ExecutorService ex = Executors.newFixedThreadPool(n);
    CyclicBarrier start = new CyclicBarrier(n);
    try {
      List<Future<T>> fs = new ArrayList<>();
      for (int k = 0; k < n; k++) {
        final int kk = k;
        fs.add(ex.submit((Callable<T>) () -> {
          start.await(30, TimeUnit.SECONDS);
          return fn.run(kk);
        }));
      }
      List<T> out = new ArrayList<>();
      for (Future<T> f : fs) {
        try {
          out.add(f.get(60, TimeUnit.SECONDS));
        } catch (java.util.concurrent.ExecutionException e) {
          Throwable c = e.getCause();
          if (c instanceof Exception) throw (Exception) c;
          if (c instanceof Error) throw (Error) c;
          throw e;
        }
      }
      return out;
    } finally {
      ex.shutdownNow();
    }
  }

  interface TaskFn<T> {
    T run(int k) throws Exception;
  }

  interface Test {
    String run() throws Exception;
  }

  /** seen: "port:pid" strings; at most POOL_SIZE server connections per backend. */
  static String checkMultiplexing(Set<String> seen, int nclients, String what) {
    Map<String, Set<String>> byPort = new TreeMap<>();
    for (String s : seen) {
      String[] pp = s.split(":");
      byPort.computeIfAbsent(pp[0], x -> new HashSet<>()).add(pp[1]);
    }
    int total = 0;
    Map<String, Integer> sizes = new TreeMap<>();
    for (Map.Entry<String, Set<String>> e : byPort.entrySet()) {
      check(e.getValue().size() <= POOL_SIZE, what + ": " + e.getValue().size()
          + " server connections on port " + e.getKey() + ", pool is " + POOL_SIZE);
      total += e.getValue().size();
      sizes.put(e.getKey(), e.getValue().size());
    }
    if (nclients > POOL_SIZE * (1 + REPLICA_PORTS.length)) {
      check(total < nclients, what + ": " + nclients + " clients used " + total + " server connections");
    }
    return "server conns per port " + sizes;
  }

  static final String[][] QUERIES = {
    {"select ?::int * 2, pg_backend_pid(), inet_server_port()", "x2"},
    {"select ?::int + 1000, pg_backend_pid(), inet_server_port()", "p1000"},
    {"select count(*)::int + ?, pg_backend_pid(), inet_server_port() from drv_jdbc_items where grp = 3", "c100"},
  };

  static int want(String kind, int i) {
    switch (kind) {
      case "x2": return i * 2;
      case "p1000": return i + 1000;
      default: return 100 + i;
    }
  }

  static String schemaThroughProxy() throws Exception {
    try (Connection c = connect(); Statement s = c.createStatement()) {
      s.execute("drop table if exists drv_jdbc_items, drv_jdbc_batch, drv_jdbc_tx");
      s.execute("create table drv_jdbc_items (id int primary key, grp int not null, v text not null)");
      s.execute("insert into drv_jdbc_items select i, i % 10, 'item-' || i from generate_series(0, 999) i");
      s.execute("create table drv_jdbc_batch (id int primary key, v text, n numeric)");
      s.execute("create table drv_jdbc_tx (id int primary key, owner int not null, v text)");
    }
    syncReplicas();
    return null;
  }

  /** 10 connections, each reusing 3 PreparedStatements 100 times (S_1.. mean different SQL). */
  static String preparedReuse() throws Exception {
    int nclients = 16;
    List<Set<String>> seenBy = parallel(nclients, k -> {
      Set<String> seen = new HashSet<>();
      try (Connection c = connect()) {
        List<PreparedStatement> ps = new ArrayList<>();
        List<String> kinds = new ArrayList<>();
        for (int j = 0; j < 3; j++) {
          String[] q = QUERIES[(j + k) % 3];
          ps.add(c.prepareStatement(q[0]));
          kinds.add(q[1]);
        }
        for (int it = 0; it < 100; it++) {
          for (int j = 0; j < 3; j++) {
            int i = k * 1000 + it;
            ps.get(j).setInt(1, i);
            try (ResultSet rs = ps.get(j).executeQuery()) {
              check(rs.next(), "no row");
              eq(rs.getInt(1), want(kinds.get(j), i), "conn " + k + " " + kinds.get(j));
              seen.add(rs.getInt(3) + ":" + rs.getInt(2));
            }
          }
        }
        for (PreparedStatement p : ps) {
          check(p.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(), "not server-prepared");
          p.close();
        }
      }
      return seen;
    });
    Set<String> all = new HashSet<>();
    boolean moved = false;
    for (Set<String> s : seenBy) {
      all.addAll(s);
      moved |= s.size() > 1;
    }
    check(moved, "no connection moved between server connections");
    return checkMultiplexing(all, nclients, "PreparedStatement reuse");
  }

  /** addBatch/executeBatch (one Sync for many Bind/Execute), and a failing batch. */
  static String batchInserts() throws Exception {
    int nclients = 6, nrows = 500;
    parallel(nclients, k -> {
      try (Connection c = connect();
          PreparedStatement ps = c.prepareStatement("insert into drv_jdbc_batch (id, v, n) values (?, ?, ?)")) {
        for (int b = 0; b < 2; b++) {
          for (int i = 0; i < nrows / 2; i++) {
            int id = k * 10000 + b * (nrows / 2) + i;
            ps.setInt(1, id);
            ps.setString(2, "v" + id);
            ps.setBigDecimal(3, new java.math.BigDecimal(id).movePointLeft(2));
            ps.addBatch();
          }
          int[] counts = ps.executeBatch();
          eq(counts.length, nrows / 2, "batch result count");
          for (int n : counts) check(n == 1 || n == Statement.SUCCESS_NO_INFO, "batch count " + n);
        }
        // a batch with a duplicate key fails as a whole (autocommit: one implicit transaction)
        ps.setInt(1, k * 10000 + 9999);
        ps.setString(2, "new");
        ps.setNull(3, Types.NUMERIC);
        ps.addBatch();
        ps.setInt(1, k * 10000);
        ps.setString(2, "dup");
        ps.setNull(3, Types.NUMERIC);
        ps.addBatch();
        try {
          ps.executeBatch();
          throw new AssertionError("duplicate key in batch not reported");
        } catch (BatchUpdateException e) {
          eq(e.getSQLState(), "23505", "batch error sqlstate");
        }
        ps.clearBatch();
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("select 5")) {
          rs.next();
          eq(rs.getInt(1), 5, "after failed batch");
        }
      }
      return null;
    });
    try (Connection p = direct(PRIMARY_PORT); Statement s = p.createStatement();
        ResultSet rs = s.executeQuery("select count(*), sum(id) from drv_jdbc_batch")) {
      rs.next();
      long want = 0;
      for (int k = 0; k < nclients; k++) for (int i = 0; i < nrows; i++) want += k * 10000 + i;
      eq(rs.getLong(1), (long) nclients * nrows, "rows after batches");
      eq(rs.getLong(2), want, "sum of ids after batches");
    }
    return null;
  }

  /** A realistic failing batch (1000 rows of 2 kB, a duplicate key in row 2): the error reaches pgshift
   * while pgJDBC is still sending the batch. The client goes on, and once idle its server
   * connection must return to the pool: POOL_SIZE other clients can open transactions at once. */
  static String failedLargeBatchGivesServerBack() throws Exception {
    Connection c = connect();
    try {
      try (PreparedStatement ps = c.prepareStatement("insert into drv_jdbc_batch (id, v, n) values (?, ?, ?)")) {
        String pad = String.join("", java.util.Collections.nCopies(200, "0123456789"));
        for (int i = 0; i < 1000; i++) {
          ps.setInt(1, i == 1 ? 800000 : 800000 + i);
          ps.setString(2, "large failing batch row " + i + pad);
          ps.setNull(3, Types.NUMERIC);
          ps.addBatch();
        }
        try {
          ps.executeBatch();
          throw new AssertionError("duplicate key in batch not reported");
        } catch (BatchUpdateException e) {
          eq(e.getSQLState(), "23505", "batch error sqlstate");
        }
      }
      try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("select 6")) {
        rs.next();
        eq(rs.getInt(1), 6, "after the failed batch");
      }
      List<Connection> others = new ArrayList<>();
      ExecutorService ex = Executors.newFixedThreadPool(POOL_SIZE);
      try {
        for (int k = 0; k < POOL_SIZE; k++) others.add(connect()); // pgJDBC's login runs SETs
        List<Future<Object>> fs = new ArrayList<>();
        for (Connection o : others) {
          fs.add(ex.submit(() -> {
            o.setAutoCommit(false);
            try (Statement s = o.createStatement(); ResultSet rs = s.executeQuery("select txid_current()")) {
              rs.next();
            }
            return null;
          }));
        }
        int got = 0;
        long deadline = System.nanoTime() + 5_000_000_000L;
        for (Future<Object> f : fs) {
          try {
            f.get(Math.max(1, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
            got++;
          } catch (java.util.concurrent.TimeoutException e) {
            // counted below
          }
        }
        if (got < POOL_SIZE) {
          c.close(); // frees what it kept, so the waiting clients finish
          throw new AssertionError("after a failed batch only " + got + " of the primary's " + POOL_SIZE
              + " server connections could be had within 5 s: the idle client kept its server connection");
        }
      } finally {
        ex.shutdown();
        ex.awaitTermination(10, TimeUnit.SECONDS);
        for (Connection o : others) o.close();
      }
    } finally {
      c.close();
    }
    try (Connection p = direct(PRIMARY_PORT); Statement s = p.createStatement();
        ResultSet rs = s.executeQuery("select count(*) from drv_jdbc_batch where id >= 800000")) {
      rs.next();
      eq(rs.getInt(1), 0, "rows of the failed batch");
    }
    return null;
  }

  /** autocommit=false with PreparedStatements: BEGIN goes out with the first statement of each
   * transaction, statements are reused across transactions (Odyssey #459 shape); commits, rollbacks
   * and errors. */
  static String autocommitOffTransactions() throws Exception {
    int nclients = 8, ntx = 25;
    parallel(nclients, k -> {
      try (Connection c = connect()) {
        c.setAutoCommit(false);
        PreparedStatement ins = c.prepareStatement("insert into drv_jdbc_tx (id, owner, v) values (?, ?, ?)");
        PreparedStatement cnt = c.prepareStatement("select count(*) from drv_jdbc_tx where owner = ?");
        PreparedStatement bad = c.prepareStatement("select 1 / (? - ?)");
        int committed = 0;
        for (int t = 0; t < ntx; t++) {
          int id = k * 1000 + t;
          ins.setInt(1, id);
          ins.setInt(2, k);
          ins.setString(3, "t" + t);
          eq(ins.executeUpdate(), 1, "insert");
          cnt.setInt(1, k);
          try (ResultSet rs = cnt.executeQuery()) {
            rs.next();
            eq(rs.getInt(1), committed + 1, "count inside the transaction");
          }
          if (t % 5 == 3) {
            bad.setInt(1, 1);
            bad.setInt(2, 1);
            try {
              bad.executeQuery().close();
              throw new AssertionError("no division by zero");
            } catch (SQLException e) {
              eq(e.getSQLState(), "22012", "error sqlstate");
            }
            c.rollback();
          } else if (t % 5 == 4) {
            c.rollback();
          } else {
            c.commit();
            committed++;
          }
        }
        try (ResultSet rs = cnt.executeQuery()) {
          rs.next();
          eq(rs.getInt(1), committed, "count after the loop");
        }
        c.commit();
        return null;
      }
    });
    try (Connection p = direct(PRIMARY_PORT); Statement s = p.createStatement();
        ResultSet rs = s.executeQuery("select count(*) from drv_jdbc_tx")) {
      rs.next();
      eq(rs.getInt(1), nclients * (ntx - 2 * (ntx / 5)), "committed rows");
    }
    return null;
  }

  /** ResultSetMetaData / ParameterMetaData of prepared statements, before and after execution and
   * from new PreparedStatement objects of cached SQL (pgJDBC then sends Describe of its existing
   * server statement, with no Parse: Supavisor #1174 shape), while other clients churn. */
  static String metadataWithoutParse() throws Exception {
    AtomicBoolean stop = new AtomicBoolean(false);
    ExecutorService churn = Executors.newFixedThreadPool(6);
    List<Future<Integer>> churners = new ArrayList<>();
    for (int k = 0; k < 6; k++) {
      final int kk = k;
      churners.add(churn.submit(() -> {
        int n = 0;
        try (Connection c = connect(); PreparedStatement ps = c.prepareStatement("select ?::int, pg_backend_pid()")) {
          while (!stop.get()) {
            ps.setInt(1, kk);
            ps.executeQuery().close();
            n++;
          }
        }
        return n;
      }));
    }
    String sql = "select id, v, grp::bigint as g, now() as ts from drv_jdbc_items where id = ? and v <> ?";
    try {
      parallel(6, k -> {
        try (Connection c = connect()) {
          for (int round = 0; round < 30; round++) {
            try (PreparedStatement ps = c.prepareStatement(sql)) {
              if (round % 3 == 0) {
                checkMeta(ps.getMetaData(), "round " + round + " before execute");
              }
              ParameterMetaData pm = ps.getParameterMetaData();
              eq(pm.getParameterCount(), 2, "parameter count");
              eq(pm.getParameterType(1), Types.INTEGER, "parameter 1 type");
              ps.setInt(1, round);
              ps.setString(2, "x");
              try (ResultSet rs = ps.executeQuery()) {
                checkMeta(rs.getMetaData(), "result set");
                check(rs.next(), "row");
                eq(rs.getString(2), "item-" + round, "v");
              }
              checkMeta(ps.getMetaData(), "round " + round + " after execute");
            }
          }
        }
        return null;
      });
    } finally {
      stop.set(true);
      churn.shutdown();
    }
    int n = 0;
    for (Future<Integer> f : churners) n += f.get(30, TimeUnit.SECONDS);
    return n + " churn queries meanwhile";
  }

  static void checkMeta(ResultSetMetaData md, String what) throws SQLException {
    check(md != null, what + ": no metadata");
    eq(md.getColumnCount(), 4, what + " column count");
    eq(Arrays.asList(md.getColumnName(1), md.getColumnName(2), md.getColumnName(3), md.getColumnName(4)),
        Arrays.asList("id", "v", "g", "ts"), what + " column names");
    eq(Arrays.asList(md.getColumnType(1), md.getColumnType(2), md.getColumnType(3)),
        Arrays.asList(Types.INTEGER, Types.VARCHAR, Types.BIGINT), what + " column types");
  }

  /** Statement.cancel() from another thread interrupts pg_sleep(10) with 57014; setQueryTimeout. */
  static String cancel() throws Exception {
    try (Connection c = connect(); PreparedStatement ps = c.prepareStatement("select pg_sleep(?)")) {
      for (String how : new String[] {"cancel", "queryTimeout"}) {
        ps.setInt(1, 10);
        ps.setQueryTimeout(how.equals("queryTimeout") ? 1 : 0);
        Thread t = null;
        if (how.equals("cancel")) {
          t = new Thread(() -> {
            try {
              Thread.sleep(700);
              ps.cancel();
            } catch (Exception e) {
              throw new RuntimeException(e);
            }
          });
          t.start();
        }
        long t0 = System.nanoTime();
        try {
          ps.executeQuery().close();
          throw new AssertionError(how + ": pg_sleep(10) was not cancelled");
        } catch (SQLException e) {
          eq(e.getSQLState(), "57014", how + " sqlstate (" + e.getMessage() + ")");
        }
        if (t != null) t.join();
        double took = (System.nanoTime() - t0) / 1e9;
        check(took < 5, how + ": took " + took + "s");
        ps.setQueryTimeout(0);
        try (PreparedStatement q = c.prepareStatement("select ?::int * 4")) {
          for (int i = 0; i < 10; i++) {
            q.setInt(1, i);
            try (ResultSet rs = q.executeQuery()) {
              rs.next();
              eq(rs.getInt(1), i * 4, "after " + how);
            }
          }
        }
      }
    }
    return null;
  }

  public static void main(String[] args) throws Exception {
    Map<String, Test> tests = new LinkedHashMap<>();
    tests.put("schema_through_proxy", JdbcTest::schemaThroughProxy);
    tests.put("prepared_statement_reuse_across_connections", JdbcTest::preparedReuse);
    tests.put("batch_inserts", JdbcTest::batchInserts);
    tests.put("failed_large_batch_gives_the_server_back", JdbcTest::failedLargeBatchGivesServerBack);
    tests.put("autocommit_off_transactions", JdbcTest::autocommitOffTransactions);
    tests.put("metadata_without_parse", JdbcTest::metadataWithoutParse);
    tests.put("cancel", JdbcTest::cancel);
    tests.put("client_encoding_as_the_server_spells_it", JdbcParity::clientEncoding);
    tests.put("saslprep_passwords_log_in", JdbcParity::saslprepPasswords);
    tests.put("one_server_statement_per_statement_text", JdbcParity::sharedStatements);
    tests.put("own_notifications_before_execute_returns", JdbcParity::ownNotificationsFirst);
    tests.put("terminate_and_cancel_a_client_by_its_pid", JdbcParity::signalByPid);
    List<String> only = Arrays.asList(args);
    int passed = 0, failed = 0;
    long tAll = System.nanoTime();
    for (Map.Entry<String, Test> e : tests.entrySet()) {
      if (!only.isEmpty() && !only.contains(e.getKey())) continue;
      long t0 = System.nanoTime();
      try {
        String note = e.getValue().run();
        passed++;
        System.out.printf("ok    %s (%.1fs)%s%n", e.getKey(), (System.nanoTime() - t0) / 1e9,
            note == null ? "" : "  [" + note + "]");
      } catch (Throwable t) {
        failed++;
        String state = t instanceof SQLException ? " [" + ((SQLException) t).getSQLState() + "]" : "";
        System.out.printf("FAIL  %s (%.1fs): %s%s: %s%n", e.getKey(), (System.nanoTime() - t0) / 1e9,
            t.getClass().getSimpleName(), state, t.getMessage());
        StackTraceElement[] st = t.getStackTrace();
        for (int i = 0; i < Math.min(6, st.length); i++) System.out.println("      at " + st[i]);
      }
    }
    System.out.printf("(%.1fs)%n", (System.nanoTime() - tAll) / 1e9);
    System.out.println(passed + " passed, " + failed + " failed");
    System.exit(failed > 0 ? 1 : 0);
  }
}
