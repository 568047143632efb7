// pgjdbc as PgBouncer 1.18 users run it (prepareThreshold=0: no named server-side statements),
// through pgml-proxy and a transaction-mode pooler: a constant call, a column call with
// parameters, an UPDATE into a vector column, a batch and a DO block, in autocommit and in a
// transaction. Prints "jdbc ok <rows embedded>" or throws. Run as a source file:
//   java -cp postgresql.jar PooledJdbc.java JDBC_URL MODEL
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;

public class PooledJdbc {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        String model = args[1];
        try (Connection c = DriverManager.getConnection(url)) {
            for (int round = 0; round < 3; round++) {
                try (PreparedStatement s = c.prepareStatement("SELECT pgml.embed(?, ?)")) {
                    s.setString(1, model);
                    s.setString(2, "hi mom " + round);
                    try (ResultSet r = s.executeQuery()) {
                        r.next();
                        Float[] v = (Float[]) r.getArray(1).getArray();
                        if (v.length != 384) throw new AssertionError("constant: " + v.length);
                    }
                }
                try (PreparedStatement s = c.prepareStatement(
                        "SELECT id, pgml.embed(?, body) FROM reviews WHERE id <= ? ORDER BY id")) {
                    s.setString(1, model);
                    s.setInt(2, 4);
                    int n = 0;
                    try (ResultSet r = s.executeQuery()) {
                        while (r.next()) {
                            Float[] v = (Float[]) r.getArray(2).getArray();
                            if (v.length != 384) throw new AssertionError("column: " + v.length);
                            n++;
                        }
                    }
                    if (n != 4) throw new AssertionError("column rows: " + n);
                }
            }
            try (PreparedStatement s = c.prepareStatement(
                    "UPDATE reviews SET copy = pgml.embed(?, body)::vector WHERE id <= ?")) {
                s.setString(1, model);
                s.setInt(2, 6);
                if (s.executeUpdate() != 6) throw new AssertionError("update");
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.execute("DO $$ BEGIN UPDATE reviews SET copy = pgml.embed('" + model
                        + "', body)::vector WHERE id = 7; END $$");
            }
            c.commit();
            c.setAutoCommit(true);
            try (Statement s = c.createStatement();
                 ResultSet r = s.executeQuery("SELECT count(*) FROM reviews WHERE copy IS NOT NULL")) {
                r.next();
                System.out.println("jdbc ok " + r.getLong(1));
            }
        }
    }
}
