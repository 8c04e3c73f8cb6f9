// pgJDBC checks that compare pgshift with a direct connection to the primary: the reported
// client_encoding, SCRAM passwords that need SASLprep, and one server-side statement per text.
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
}
