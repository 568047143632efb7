/*
 * Spring AI's PostgresMlEmbeddingModel, reduced to the JDBC it does, through pgjdbc and pgml-proxy.
 *
 * No Spring: the statements are Spring AI's strings exactly (spring-projects/spring-ai,
 * models/spring-ai-postgresml, org.springframework.ai.postgresml.PostgresMlEmbeddingModel; the
 * same in 1.x and on main / 2.x):
 *   afterPropertiesSet (createExtension = true):
 *     "CREATE EXTENSION IF NOT EXISTS pgml"
 *     "CREATE EXTENSION IF NOT EXISTS " + vectorType.extensionName   (PG_VECTOR: "vector")
 *   embed(String):
 *     "SELECT pgml.embed(?, ?, ?::JSONB)" + vectorType.cast + " AS embedding"
 *   call(EmbeddingRequest):
 *     "SELECT pgml.embed(?, text, ?::JSONB)" + vectorType.cast
 *         + " AS embedding FROM (SELECT unnest(?) AS text) AS texts"
 * with vectorType.cast "" (PG_ARRAY, the default; read with rs.getArray("embedding") as Float[])
 * or "::vector" (PG_VECTOR; read with rs.getString("embedding") and parsed from "[a,b,...]").
 * Parameters as Spring binds them: setString for the transformer, the text and the kwargs JSON
 * (JdbcTemplate's queryForObject sets String arguments with setString), and
 * setArray(connection.createArrayOf("TEXT", texts)) for the batch. Like JdbcTemplate, every call
 * prepares a new PreparedStatement on the same connection: pgjdbc's per-connection statement
 * cache switches a statement to a named server-prepared one after prepareThreshold (default 5)
 * executions, so ROUNDS > 5 exercises both the unnamed and the named statement.
 *
 * Usage (classpath: this class's directory and pgjdbc, e.g. /usr/share/java/postgresql.jar):
 *   java SpringAiStatements test  JDBC_URL MODEL
 *       Runs afterPropertiesSet's steps, then the single and the batch form, without and with
 *       ::vector, ROUNDS times each on distinct texts. Prints JSON lines on stdout:
 *         {"step":"CREATE EXTENSION IF NOT EXISTS pgml","ok":false,"sqlstate":"...","error":"..."}
 *         {"form":"single","cast":"","round":0,"text":"...","embedding":[...]}   (one per input,
 *             in input order; batch rows in the order Postgres returned them)
 *         {"prepared":N,"statements":[...]}   (pg_prepared_statements of the session)
 *       A failed step is reported and the program goes on (Spring AI would stop; the test wants
 *       to see everything); exit status 0 when every step and call succeeded, 1 otherwise.
 *   java SpringAiStatements bench JDBC_URL MODEL TABLE PREFIX WARM_PREFIX
 *       Reads the texts (SELECT PREFIX || review_body FROM TABLE ORDER BY id), makes one warm-up
 *       batch call on 10 texts with WARM_PREFIX instead, then times one batch call with all the
 *       texts (executeQuery and reading every row with rs.getArray). Prints
 *         {"rows":N,"seconds":S}
 */

import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;

public class SpringAiStatements {

    static final int ROUNDS = 7;

    static final String SINGLE_PREFIX = "SELECT pgml.embed(?, ?, ?::JSONB)";
    static final String SINGLE_SUFFIX = " AS embedding";
    static final String BATCH_PREFIX = "SELECT pgml.embed(?, text, ?::JSONB)";
    static final String BATCH_SUFFIX = " AS embedding FROM (SELECT unnest(?) AS text) AS texts";
    /** PostgresMlEmbeddingOptions' default kwargs (an empty map) as Spring serialises it. */
    static final String KWARGS = "{}";

    static boolean failed = false;

    public static void main(String[] args) throws Exception {
        if (args.length >= 3 && args[0].equals("test")) {
            test(args[1], args[2]);
            System.exit(failed ? 1 : 0);
        } else if (args.length >= 6 && args[0].equals("bench")) {
            bench(args[1], args[2], args[3], args[4], args[5]);
        } else {
            System.err.println("usage: SpringAiStatements test JDBC_URL MODEL"
                    + " | bench JDBC_URL MODEL TABLE PREFIX WARM_PREFIX");
            System.exit(2);
        }
    }

    static void test(String url, String model) throws SQLException {
        try (Connection conn = DriverManager.getConnection(url)) {
            // afterPropertiesSet with createExtension = true, for PG_ARRAY and for PG_VECTOR.
            step(conn, "CREATE EXTENSION IF NOT EXISTS pgml");
            step(conn, "CREATE EXTENSION IF NOT EXISTS " + "vector");
            for (String cast : new String[] {"", "::vector"}) {
                for (int round = 0; round < ROUNDS; round++) {
                    // embed(String): one statement per text.
                    for (int i = 0; i < 3; i++) {
                        String text = text("single" + cast, round, i);
                        try (PreparedStatement ps = conn.prepareStatement(SINGLE_PREFIX + cast + SINGLE_SUFFIX)) {
                            ps.setString(1, model);
                            ps.setString(2, text);
                            ps.setString(3, KWARGS);
                            try (ResultSet rs = ps.executeQuery()) {
                                if (!rs.next()) {
                                    fail("single" + cast + " round " + round + ": no row");
                                    continue;
                                }
                                emit("single", cast, round, text, read(rs, cast));
                                if (rs.next()) {
                                    fail("single" + cast + " round " + round + ": more than one row");
                                }
                            }
                        } catch (SQLException e) {
                            error("single" + cast + " round " + round, e);
                        }
                    }
                    // call(EmbeddingRequest): one statement for the whole list.
                    List<String> texts = new ArrayList<>();
                    for (int i = 0; i < 4 + round; i++) {
                        texts.add(text("batch" + cast, round, i));
                    }
                    try (PreparedStatement ps = conn.prepareStatement(BATCH_PREFIX + cast + BATCH_SUFFIX)) {
                        ps.setString(1, model);
                        ps.setString(2, KWARGS);
                        ps.setArray(3, conn.createArrayOf("TEXT", texts.toArray(Object[]::new)));
                        List<float[]> rows = new ArrayList<>();
                        try (ResultSet rs = ps.executeQuery()) {
                            while (rs.next()) {
                                rows.add(read(rs, cast));
                            }
                        }
                        if (rows.size() != texts.size()) {
                            fail("batch" + cast + " round " + round + ": " + rows.size() + " rows for "
                                    + texts.size() + " texts");
                        }
                        for (int i = 0; i < Math.min(rows.size(), texts.size()); i++) {
                            emit("batch", cast, round, texts.get(i), rows.get(i));
                        }
                    } catch (SQLException e) {
                        error("batch" + cast + " round " + round, e);
                    }
                }
            }
            // Which statements this session holds server-prepared (named): pgjdbc's after the
            // threshold. The unnamed statement never shows here.
            List<String> statements = new ArrayList<>();
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT statement FROM pg_prepared_statements ORDER BY name")) {
                while (rs.next()) {
                    statements.add(json(rs.getString(1)));
                }
            }
            System.out.println("{\"prepared\":" + statements.size() + ",\"statements\":["
                    + String.join(",", statements) + "]}");
        }
    }

    static void bench(String url, String model, String table, String prefix, String warmPrefix)
            throws SQLException {
        try (Connection conn = DriverManager.getConnection(url)) {
            List<String> bodies = new ArrayList<>();
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT review_body FROM " + table + " ORDER BY id")) {
                while (rs.next()) {
                    bodies.add(rs.getString(1));
                }
            }
            List<String> warm = new ArrayList<>();
            for (String b : bodies.subList(0, Math.min(10, bodies.size()))) {
                warm.add(warmPrefix + b);
            }
            batch(conn, model, warm);
            List<String> texts = new ArrayList<>();
            for (String b : bodies) {
                texts.add(prefix + b);
            }
            long t0 = System.nanoTime();
            int rows = batch(conn, model, texts);
            long t1 = System.nanoTime();
            if (rows != texts.size()) {
                throw new IllegalStateException(rows + " rows for " + texts.size() + " texts");
            }
            System.out.println("{\"rows\":" + rows + ",\"seconds\":" + ((t1 - t0) / 1e9) + "}");
        }
    }

    /** Spring AI's call() with PG_ARRAY: executeQuery and every row read as Float[]. */
    static int batch(Connection conn, String model, List<String> texts) throws SQLException {
        int rows = 0;
        try (PreparedStatement ps = conn.prepareStatement(BATCH_PREFIX + BATCH_SUFFIX)) {
            ps.setString(1, model);
            ps.setString(2, KWARGS);
            ps.setArray(3, conn.createArrayOf("TEXT", texts.toArray(Object[]::new)));
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    if (read(rs, "").length == 0) {
                        throw new IllegalStateException("empty embedding");
                    }
                    rows++;
                }
            }
        }
        return rows;
    }

    /** The row mappers of PostgresMlEmbeddingModel.VectorType. */
    static float[] read(ResultSet rs, String cast) throws SQLException {
        if (cast.isEmpty()) {
            Array embedding = rs.getArray("embedding");
            Float[] boxed = (Float[]) embedding.getArray();
            float[] out = new float[boxed.length];
            for (int i = 0; i < boxed.length; i++) {
                out[i] = boxed[i];
            }
            return out;
        }
        String embedding = rs.getString("embedding");
        String[] parts = embedding.substring(1, embedding.length() - 1).split(",");
        float[] out = new float[parts.length];
        for (int i = 0; i < parts.length; i++) {
            out[i] = Float.parseFloat(parts[i]);
        }
        return out;
    }

    /** Distinct texts per form, cast, round and index, some outside ASCII. */
    static String text(String form, int round, int i) {
        String[] subjects = {"soup", "hotel room", "film", "café au lait", "ramen (ラーメン)", "quilt 🧵"};
        String[] verdicts = {"great", "awful", "fine, \"mostly\"", "a\\b test"};
        return "spring-ai " + form + " round " + round + " text " + i + ": the "
                + subjects[(round + i) % subjects.length] + " was " + verdicts[i % verdicts.length];
    }

    static void step(Connection conn, String sql) {
        try (Statement st = conn.createStatement()) {
            st.execute(sql);
            System.out.println("{\"step\":" + json(sql) + ",\"ok\":true}");
        } catch (SQLException e) {
            failed = true;
            System.out.println("{\"step\":" + json(sql) + ",\"ok\":false,\"sqlstate\":" + json(e.getSQLState())
                    + ",\"error\":" + json(String.valueOf(e.getMessage())) + "}");
        }
        System.out.flush();
    }

    static void emit(String form, String cast, int round, String text, float[] embedding) {
        StringBuilder sb = new StringBuilder();
        sb.append("{\"form\":").append(json(form)).append(",\"cast\":").append(json(cast))
                .append(",\"round\":").append(round).append(",\"text\":").append(json(text))
                .append(",\"embedding\":[");
        for (int i = 0; i < embedding.length; i++) {
            if (i > 0) {
                sb.append(',');
            }
            // Float.toString round-trips a float ("1.0E-5" is a JSON number too).
            sb.append(Float.toString(embedding[i]));
        }
        System.out.println(sb.append("]}"));
    }

    static void error(String what, SQLException e) {
        fail(what + ": SQLSTATE " + e.getSQLState() + ": " + e.getMessage());
    }

    static void fail(String message) {
        failed = true;
        System.out.println("{\"error\":" + json(message) + "}");
    }

    /** A JSON string, ASCII only (everything else as \\uXXXX UTF-16 escapes). */
    static String json(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder sb = new StringBuilder("\"");
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                sb.append('\\').append(c);
            } else if (c >= 0x20 && c < 0x7f) {
                sb.append(c);
            } else {
                sb.append(String.format("\\u%04x", (int) c));
            }
        }
        return sb.append('"').toString();
    }
}
