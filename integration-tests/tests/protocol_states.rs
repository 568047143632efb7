//! Postgres' protocol state machine through the proxy: a Sync or Flush inside COPY FROM STDIN
//! (simple and extended, pipelined or not, CopyDone or CopyFail), and a Query after an error in
//! an unfinished extended batch (pgml.embed in it or not). A hand-written client sends each
//! script to Postgres directly and through the proxy: the messages it gets back must be the
//! same (types, and SQLSTATE of errors), and afterwards the proxy session still serves a
//! pgml.embed, whose answer waits for every ReadyForQuery the proxy believes owed.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use pgml_integration_tests::trust::add_trust_role;
use pgml_integration_tests::{connect, stack, startup_packet, DEFAULT_MODEL};

/// A role that logs in without a password over TCP and the Unix socket (the proxy's way to
/// the embedded Postgres), with `trust` lines first in pg_hba.conf, so the hand-written client
/// needs no SCRAM; it may write to the table the scripts COPY into.
fn trust_user() -> &'static str {
    static USER: OnceLock<&'static str> = OnceLock::new();
    USER.get_or_init(|| {
        add_trust_role(
            "states_trust",
            "DROP TABLE IF EXISTS states_copy; CREATE TABLE states_copy (x int); \
             GRANT ALL ON states_copy TO states_trust;",
        );
        "states_trust"
    })
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(text: &str) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    out.push(0);
    out
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &cstr(sql))
}

/// Parse of the unnamed statement, no parameter types.
fn parse(sql: &str) -> Vec<u8> {
    let mut body = cstr("");
    body.extend_from_slice(&cstr(sql));
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'P', &body)
}

/// Bind of the unnamed portal to the unnamed statement, no parameters, text results.
fn bind() -> Vec<u8> {
    message(b'B', &[0; 8])
}

fn describe_portal() -> Vec<u8> {
    message(b'D', b"P\0")
}

fn execute() -> Vec<u8> {
    message(b'E', &[0, 0, 0, 0, 0])
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

fn flush() -> Vec<u8> {
    message(b'H', b"")
}

fn copy_data(data: &str) -> Vec<u8> {
    message(b'd', data.as_bytes())
}

fn copy_done() -> Vec<u8> {
    message(b'c', b"")
}

fn copy_fail(reason: &str) -> Vec<u8> {
    message(b'f', &cstr(reason))
}

/// One step of a script: send these messages, then read until this many ReadyForQuery
/// messages arrived, or (None) until a CopyInResponse.
type Step = (Vec<Vec<u8>>, Option<usize>);

/// A hand-written protocol client; every read fails after a timeout instead of hanging.
struct Raw {
    conn: TcpStream,
}

impl Raw {
    fn login(port: u16) -> Raw {
        // Before connecting: a backend reads pg_hba.conf as it was when it was forked.
        let startup = startup_packet(&[("user", trust_user()), ("database", "postgres")]);
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.write_all(&startup).unwrap();
        let mut raw = Raw { conn };
        let (login, _) = raw.until(Some(1));
        assert!(!login.iter().any(|(t, _)| *t == 'E'), "{login:?}");
        raw
    }

    fn read_message(&mut self, timeout: Duration) -> Option<(u8, Vec<u8>)> {
        self.conn.set_read_timeout(Some(timeout)).unwrap();
        let mut header = [0u8; 5];
        match self.conn.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) => panic!("the connection failed: {e}"),
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.conn.read_exact(&mut body).unwrap();
        Some((header[0], body))
    }

    /// Messages (type, SQLSTATE of an error) up to the `ready`-th ReadyForQuery, or up to a
    /// CopyInResponse; then the DataRows' first columns. Fails after 60 s without the end.
    fn until(&mut self, ready: Option<usize>) -> (Vec<(char, String)>, Vec<String>) {
        let (mut seen, mut rows, mut readies) = (Vec::new(), Vec::new(), 0);
        loop {
            let Some((tag, body)) = self.read_message(Duration::from_secs(60)) else {
                panic!("no answer within 60 s (a hung session) after {seen:?}");
            };
            seen.push((
                tag as char,
                if tag == b'E' {
                    sqlstate(&body)
                } else {
                    String::new()
                },
            ));
            if tag == b'D' {
                rows.push(first_column(&body));
            }
            readies += usize::from(tag == b'Z');
            match ready {
                Some(n) if readies == n => return (seen, rows),
                None if tag == b'G' => return (seen, rows),
                _ => {}
            }
        }
    }

    /// Runs `script` and returns every message it got back (and that nothing more came).
    fn run(&mut self, script: &[Step]) -> Vec<(char, String)> {
        let mut seen = Vec::new();
        for (messages, ready) in script {
            self.conn.write_all(&messages.concat()).unwrap();
            seen.extend(self.until(*ready).0);
        }
        let extra = self.read_message(Duration::from_millis(500));
        assert!(
            extra.is_none(),
            "more than Postgres sends: {extra:?} after {seen:?}"
        );
        seen
    }
}

fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .unwrap_or_default()
}

fn first_column(body: &[u8]) -> String {
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    String::from_utf8_lossy(&body[6..6 + len.max(0) as usize]).into_owned()
}

/// Runs `script` on Postgres directly and through the proxy: the same messages come back.
/// Then the proxy session answers a pgml.embed (served by the proxy, which first waits for
/// what it believes the upstream still owes) and a plain query. Returns the messages.
fn same_as_postgres(script: &[Step]) -> Vec<(char, String)> {
    let direct = Raw::login(stack().pg_port.expect("the embedded Postgres")).run(script);
    let mut proxied = Raw::login(stack().port);
    let through = proxied.run(script);
    assert_eq!(through, direct, "through the proxy vs directly");
    let embed = format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'still served')::text");
    let (seen, rows) = proxied.until_after(&query(&embed));
    assert_eq!(rows.len(), 1, "{seen:?}");
    assert!(
        rows[0].starts_with('{') && rows[0].matches(',').count() == 383,
        "{seen:?}"
    );
    let (_, rows) = proxied.until_after(&query("SELECT count(*) FROM states_copy"));
    assert_eq!(rows.len(), 1);
    direct
}

impl Raw {
    fn until_after(&mut self, messages: &[u8]) -> (Vec<(char, String)>, Vec<String>) {
        self.conn.write_all(messages).unwrap();
        self.until(Some(1))
    }
}

fn tags(seen: &[(char, String)]) -> String {
    seen.iter().map(|(t, _)| *t).collect()
}

#[test]
fn a_sync_and_a_flush_inside_copy_from_stdin_are_ignored_as_by_postgres() {
    let copy = query("COPY states_copy FROM STDIN");
    let seen = same_as_postgres(&[
        (vec![copy], None),
        (
            vec![
                copy_data("1\n"),
                sync(),
                copy_data("2\n"),
                flush(),
                copy_done(),
            ],
            Some(1),
        ),
    ]);
    assert_eq!(tags(&seen), "GCZ");
}

#[test]
fn a_copy_pipelined_with_its_data_and_a_sync_is_answered_once() {
    let seen = same_as_postgres(&[(
        vec![
            query("COPY states_copy FROM STDIN"),
            copy_data("3\n"),
            sync(),
            copy_done(),
        ],
        Some(1),
    )]);
    assert_eq!(tags(&seen), "GCZ");
}

#[test]
fn a_copy_fail_after_a_sync_inside_copy_ends_it_with_one_error() {
    let seen = same_as_postgres(&[
        (vec![query("COPY states_copy FROM STDIN")], None),
        (
            vec![copy_data("4\n"), sync(), copy_fail("changed my mind")],
            Some(1),
        ),
    ]);
    assert_eq!(tags(&seen), "GEZ");
    assert_eq!(seen[1].1, "57014");
}

#[test]
fn a_query_after_an_error_in_an_unfinished_batch_is_skipped_until_sync() {
    let seen = same_as_postgres(&[(
        vec![parse("SELEC 1"), bind(), query("SELECT 1"), sync()],
        Some(1),
    )]);
    assert_eq!(tags(&seen), "EZ");
    assert_eq!(seen[0].1, "42601");
    // An error at Execute, after statements that succeeded.
    let seen = same_as_postgres(&[(
        vec![
            parse("SELECT 1 / (random() * 0)::int"),
            bind(),
            execute(),
            query("SELECT 1"),
            sync(),
        ],
        Some(1),
    )]);
    assert_eq!(tags(&seen), "12EZ");
    assert_eq!(seen[2].1, "22012");
}

#[test]
fn an_extended_copy_with_a_sync_sent_before_its_data_is_answered_once() {
    // As libpq's PQexecParams sends it: the Sync right after the Execute (the COPY reads and
    // ignores it), then the data, CopyDone and another Sync.
    let seen = same_as_postgres(&[
        (
            vec![
                parse("COPY states_copy FROM STDIN"),
                bind(),
                describe_portal(),
                execute(),
                sync(),
            ],
            None,
        ),
        (vec![copy_data("5\n"), copy_done(), sync()], Some(1)),
    ]);
    assert_eq!(tags(&seen), "12nGCZ");
    // Without the early Sync.
    let seen = same_as_postgres(&[
        (
            vec![
                parse("COPY states_copy FROM STDIN"),
                bind(),
                execute(),
                flush(),
            ],
            None,
        ),
        (vec![copy_data("6\n"), copy_done(), sync()], Some(1)),
    ]);
    assert_eq!(tags(&seen), "12GCZ");
}

#[test]
fn a_failed_extended_copy_skips_to_the_sync_after_it() {
    let seen = same_as_postgres(&[
        (
            vec![
                parse("COPY states_copy FROM STDIN"),
                bind(),
                execute(),
                sync(),
            ],
            None,
        ),
        (
            vec![
                copy_data("not a number\n"),
                copy_done(),
                query("SELECT 1"),
                sync(),
            ],
            Some(1),
        ),
    ]);
    assert_eq!(tags(&seen), "12GEZ");
    assert_eq!(seen[3].1, "22P02");
}

#[test]
fn a_pgml_embed_query_in_a_failed_batch_is_skipped_as_postgres_skips_it() {
    let embed = format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'skipped')");
    let seen = same_as_postgres(&[(
        vec![parse("SELEC 1"), bind(), query(&embed), sync()],
        Some(1),
    )]);
    assert_eq!(tags(&seen), "EZ");
    // The same with an extended pgml.embed statement in the failed batch.
    let seen = same_as_postgres(&[(
        vec![
            parse("SELEC 1"),
            parse(&embed),
            bind(),
            execute(),
            query(&embed),
            sync(),
        ],
        Some(1),
    )]);
    assert_eq!(tags(&seen), "EZ");
}

#[tokio::test]
async fn a_pgml_embed_query_inside_an_open_batch_runs_in_it() {
    // Postgres runs a Query sent before the batch's Sync inside the batch's transaction: the
    // proxy cannot run queries of its own there, and still answers it.
    let mut raw = Raw::login(stack().port);
    let embed = format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'mid-batch')::text");
    raw.conn
        .write_all(
            &[
                parse("INSERT INTO states_copy VALUES (7)"),
                bind(),
                execute(),
                query(&embed),
                sync(),
            ]
            .concat(),
        )
        .unwrap();
    let (seen, rows) = raw.until(Some(2));
    assert_eq!(tags(&seen), "12CTDCZZ", "{seen:?}");
    assert_eq!(rows[0].matches(',').count(), 383);
    let admin = connect(&stack().direct_url()).await.unwrap();
    let sevens: i64 = admin
        .query_one("SELECT count(*) FROM states_copy WHERE x = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sevens, 1, "the Query committed the batch's INSERT");
}
