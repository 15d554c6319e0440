// PgJDBC (what DBeaver uses) against Twinlake: connect, read metadata, query with a
// prepared statement six times (from the fifth PgJDBC uses a named server statement).
// Usage: java -cp postgresql.jar Probe.java URL USER PASSWORD
import java.sql.*;

public class Probe {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("server " + md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT device, count(*) AS n FROM climate GROUP BY device ORDER BY device")) {
                while (rs.next()) {
                    System.out.println("row " + rs.getString("device") + " " + rs.getLong("n"));
                }
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT max(temp) FROM climate WHERE device = ?")) {
                for (int i = 0; i < 6; i++) {
                    ps.setString(1, "d1");
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        System.out.println("prepared " + i + " " + rs.getDouble(1));
                    }
                }
            }
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT time FROM climate WHERE device = 'd3' ORDER BY time LIMIT 1")) {
                rs.next();
                Timestamp t = rs.getTimestamp(1);
                System.out.println("time " + t.toInstant());
            }
        }
    }
}
