// pgJDBC checks that compare pgshift with a direct connection to the primary: the reported
// client_encoding, SCRAM passwords that need SASLprep, one server-side statement per text, a
// listener's own notifications and their sender pid, pg_cancel/terminate_backend by pid.
// Compiled and run with JdbcTest.java (whose main registers these tests).

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;

final class JdbcParity {
  private JdbcParity() {}

  /** A pgshift with one server connection, to the primary alone (run.sh). */
  static final int ONE_PORT = Integer.parseInt(JdbcTest.env("PGSHIFT_DRV_ONE_PORT", String.valueOf(JdbcTest.PORT)));
  /** Same list as run.sh SASL_ROLES: a combining acute accent, a no-break space. */
  static final String[][] SASL_ROLES = {{"drv_sasl_accent", "cafe\u0301-pw"}, {"drv_sasl_nbsp", "open\u00a0sesame"}};
  static final String JAPANESE = "\u65e5\u672c\u8a9e \u00e9";

  static Connection login(int port, String user, String password, String extra) throws SQLException {
    Properties p = new Properties();
    p.setProperty("user", user);
    p.setProperty("password", password);
    return DriverManager.getConnection("jdbc:postgresql://" + JdbcTest.HOST + ":" + port + "/app" + extra, p);
  }

  /** (reported client_encoding, rows of a non-ASCII round trip repeated on whichever server). */
  static String encodingView(int port) throws SQLException {
    try (Connection c = login(port, "app", "app", "?prepareThreshold=1");
        PreparedStatement ps = c.prepareStatement("select ?::text, chr(26085), current_setting('client_encoding')")) {
      java.util.TreeSet<String> rows = new java.util.TreeSet<>();
      for (int i = 0; i < 12; i++) {
        ps.setString(1, JAPANESE);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          rows.add(rs.getString(1) + "|" + rs.getString(2) + "|" + rs.getString(3));
        }
      }
      return c.unwrap(PGConnection.class).getParameterStatus("client_encoding") + " " + rows;
    }
  }

  /** pgJDBC always asks for UTF8: pgshift reports it as PostgreSQL does, and text round-trips. */
  static String clientEncoding() throws Exception {
    String direct = encodingView(JdbcTest.PRIMARY_PORT);
    String via = encodingView(JdbcTest.PORT);
    JdbcTest.eq(via, direct, "(reported client_encoding, rows) through pgshift vs direct");
    JdbcTest.eq(via, "UTF8 [" + JAPANESE + "|\u65e5|UTF8]", "reported client_encoding and rows");
    return via.substring(0, via.indexOf(' '));
  }

  static void createSaslRoles() throws SQLException {
    try (Connection c = JdbcTest.direct(JdbcTest.PRIMARY_PORT); Statement s = c.createStatement()) {
      s.execute("set password_encryption = 'scram-sha-256'");
      for (String[] r : SASL_ROLES) {
        s.execute("do $$ begin if not exists (select from pg_roles where rolname = '" + r[0] + "') "
            + "then create role " + r[0] + " login; end if; end $$");
        s.execute("alter role " + r[0] + " password '" + r[1] + "'");
        s.execute("grant all on database app to " + r[0]);
      }
    }
  }

  /** Passwords with a combining accent or a no-break space log in through pgshift as directly. */
  static String saslprepPasswords() throws Exception {
    createSaslRoles();
    for (String[] r : SASL_ROLES) {
      for (int port : new int[] {JdbcTest.PRIMARY_PORT, JdbcTest.PORT}) {
        try (Connection c = login(port, r[0], r[1], ""); Statement s = c.createStatement();
            ResultSet rs = s.executeQuery("select current_user::text")) {
          rs.next();
          JdbcTest.eq(rs.getString(1), r[0], "current_user on port " + port);
        }
        try (Connection c = login(port, r[0], r[1] + "x", "")) {
          throw new AssertionError(r[0] + ": a wrong password was accepted on port " + port);
        } catch (SQLException e) {
          JdbcTest.eq(e.getSQLState(), "28P01", r[0] + ": wrong password on port " + port);
        }
      }
    }
    return null;
  }

  static int sharedCopies() throws SQLException {
    try (Connection c = login(ONE_PORT, "app", "app", "");
        PreparedStatement ps = c.prepareStatement("select count(*)::int from pg_prepared_statements where statement = ?")) {
      ps.setString(1, "select $1::int + 41");
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        return rs.getInt(1);
      }
    }
  }

  static Connection prepareShared() throws SQLException {
    Connection c = login(ONE_PORT, "app", "app", "?prepareThreshold=1");
    try (PreparedStatement ps = c.prepareStatement("select ?::int + 41")) {
      ps.setInt(1, 1);
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        JdbcTest.eq(rs.getInt(1), 42, "through pgshift");
      }
    }
    return c;
  }

  /** Four connections (prepareThreshold=1: a named S_n from the first execution) prepare the same
   *  text through a pgshift with one server connection, at once, then in turn: one row for it in
   *  pg_prepared_statements on the server connection. */
  static String sharedStatements() throws Exception {
    List<Connection> held = new ArrayList<>(JdbcTest.parallel(4, k -> prepareShared()));
    int atOnce = sharedCopies();
    for (Connection c : held) c.close();
    JdbcTest.eq(atOnce, 1, "copies on the server after four connections prepared at once");
    for (int k = 0; k < 4; k++) prepareShared().close();
    JdbcTest.eq(sharedCopies(), 1, "copies on the server after four connections prepared in turn");
    return null;
  }

  /** Notifications already received, as "payload:sender is pid" (getNotifications() does not wait). */
  static List<String> notes(PGNotification[] ns, int pid) {
    List<String> out = new ArrayList<>();
    for (PGNotification n : ns == null ? new PGNotification[0] : ns) out.add(n.getParameter() + ":" + (n.getPID() == pid));
    return out;
  }

  /** What a listening connection had received when each statement returned: its own
   * notifications, then another connection's (waited for with getNotifications(5000)). */
  static List<String> ownNotifications(int port, String extra) throws Exception {
    List<String> out = new ArrayList<>();
    try (Connection c = login(port, "app", "app", extra); Connection other = login(port, "app", "app", extra);
        Statement s = c.createStatement(); Statement so = other.createStatement()) {
      PGConnection pg = c.unwrap(PGConnection.class);
      int me = pg.getBackendPID();
      s.execute("LISTEN drv_jdbc_own");
      s.execute("NOTIFY drv_jdbc_own, 'plain'");
      out.add("notify " + notes(pg.getNotifications(), me));
      s.execute("DO $$ BEGIN PERFORM pg_notify('drv_jdbc_own', 'do'); END $$");
      out.add("do " + notes(pg.getNotifications(), me));
      try (PreparedStatement ps = c.prepareStatement("select pg_notify(?, ?)")) {
        ps.setString(1, "drv_jdbc_own");
        ps.setString(2, "param");
        ps.executeQuery().close();
      }
      out.add("pg_notify(?, ?) " + notes(pg.getNotifications(), me));
      c.setAutoCommit(false);
      s.execute("NOTIFY drv_jdbc_own, 'tx'");
      out.add("in transaction " + notes(pg.getNotifications(), me));
      c.commit();
      out.add("commit " + notes(pg.getNotifications(), me));
      c.setAutoCommit(true);
      so.execute("NOTIFY drv_jdbc_own, 'other'");
      out.add("other " + notes(pg.getNotifications(5000), other.unwrap(PGConnection.class).getBackendPID()));
    }
    return out;
  }

  /** After stmt.execute("NOTIFY ..."), getNotifications() holds the connection's own notification
   * with getPID() == getBackendPID(), through pgshift as directly; the default prepareThreshold
   * and prepareThreshold=1 (a named statement from the first execution, LISTEN included). */
  static String ownNotificationsFirst() throws Exception {
    List<String> want = List.of("notify [plain:true]", "do [do:true]", "pg_notify(?, ?) [param:true]",
        "in transaction []", "commit [tx:true]", "other [other:true]");
    for (String extra : new String[] {"", "?prepareThreshold=1"}) {
      List<String> direct = ownNotifications(JdbcTest.PRIMARY_PORT, extra);
      JdbcTest.eq(direct, want, "directly " + extra);
      JdbcTest.eq(ownNotifications(JdbcTest.PORT, extra), direct, "through pgshift vs directly " + extra);
    }
    return null;
  }

  /** Waits until a statement containing marker runs on some node of the bed (pgshift may route a
   * read to a replica), so that a cancel or terminate sent next finds it running. */
  static void waitRunning(String marker) throws Exception {
    List<Integer> ports = new ArrayList<>(List.of(JdbcTest.PRIMARY_PORT));
    for (String r : JdbcTest.REPLICA_PORTS) ports.add(Integer.parseInt(r));
    for (int i = 0; i < 500; i++) {
      for (int port : ports) {
        try (Connection c = JdbcTest.direct(port); PreparedStatement ps = c.prepareStatement(
            "select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() and strpos(query, ?) > 0")) {
          ps.setString(1, marker);
          try (ResultSet rs = ps.executeQuery()) {
            if (rs.next() && rs.getInt(1) > 0) return;
          }
        }
      }
      Thread.sleep(20);
    }
    throw new AssertionError("no statement with " + marker + " ran within 10 s");
  }

  static String outcome(java.util.concurrent.Callable<Object> f) {
    try {
      return "returned " + f.call();
    } catch (SQLException e) {
      return "SQLState " + e.getSQLState();
    } catch (Exception e) {
      return e.getClass().getSimpleName();
    }
  }

  static boolean signal(Connection admin, String kind, int pid) throws SQLException {
    try (PreparedStatement ps = admin.prepareStatement("select pg_" + kind + "_backend(?)")) {
      ps.setInt(1, pid);
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        return rs.getBoolean(1);
      }
    }
  }

  /** A victim runs pg_sleep(20); another connection cancels it, then terminates it, by the pid of
   * PGConnection.getBackendPID() (the call a PreparedStatement with the default prepareThreshold:
   * one unnamed Parse/Bind/Describe/Execute/Sync batch). */
  static List<String> signalVictim(int port) throws Exception {
    List<String> out = new ArrayList<>();
    try (Connection victim = login(port, "app", "app", ""); Connection admin = login(port, "app", "app", "")) {
      int pid = victim.unwrap(PGConnection.class).getBackendPID();
      java.util.concurrent.ExecutorService ex = java.util.concurrent.Executors.newSingleThreadExecutor();
      try {
        for (String kind : new String[] {"cancel", "terminate"}) {
          String marker = "drv_jdbc_victim_" + kind + "_" + System.nanoTime();
          java.util.concurrent.Future<String> running = ex.submit(() -> outcome(() -> {
            try (Statement s = victim.createStatement(); ResultSet rs = s.executeQuery("select pg_sleep(20) /* " + marker + " */")) {
              return rs.next();
            }
          }));
          waitRunning(marker);
          out.add(kind + " " + signal(admin, kind, pid));
          out.add(kind + ": victim " + running.get(15, java.util.concurrent.TimeUnit.SECONDS));
          out.add("after " + kind + " " + outcome(() -> {
            try (Statement s = victim.createStatement(); ResultSet rs = s.executeQuery("select 41 + 1")) {
              rs.next();
              return rs.getInt(1);
            }
          }));
        }
      } finally {
        ex.shutdownNow();
      }
      out.add("unknown pid " + signal(admin, "terminate", 2147483000));
      java.sql.SQLWarning w = admin.getWarnings();
      out.add("unknown pid: warning " + (w == null ? null : w.getMessage()));
    }
    return out;
  }

  /** pg_cancel_backend(getBackendPID()) cancels the victim's pg_sleep(20) (57014) and it goes on;
   * pg_terminate_backend ends its session (57P01); both true; an unknown pid false with
   * PostgreSQL's warning. The same through pgshift as directly. */
  static String signalByPid() throws Exception {
    List<String> direct = signalVictim(JdbcTest.PRIMARY_PORT);
    JdbcTest.eq(direct.subList(0, 4), List.of("cancel true", "cancel: victim SQLState 57014", "after cancel returned 42",
        "terminate true"), "directly");
    JdbcTest.eq(direct.get(4), "terminate: victim SQLState 57P01", "directly: terminated");
    JdbcTest.eq(signalVictim(JdbcTest.PORT), direct, "through pgshift vs directly");
    return null;
  }
}
