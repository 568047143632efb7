//! One probe connection of the password check: a StartupMessage without a password, read as
//! far as the server's verdict (a credentials request, AuthenticationOk, or an error), and for
//! a session let in, the trusting pg_hba.conf lines it may read. Knows the wire, not the policy.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;
use crate::net::messages::authentication;
use crate::net::messages::error_response::Fields;
use crate::net::messages::query::Query;
use crate::net::messages::startup::StartupMessage;

/// The largest server message a probe reads (authentication requests, errors, the few rows
/// of pg_hba_file_rules).
const MAX_MESSAGE: usize = 1 << 20;

/// pg_hba.conf lines that let a connection in without a password, when the probe's role may
/// read them (superusers): named in the refusal so the operator knows which line to change.
const HBA_RULES: &str = "SELECT line_number::text, type, \
     pg_catalog.array_to_string(database, ','), pg_catalog.array_to_string(user_name, ','), \
     coalesce(address, ''), coalesce(netmask, ''), auth_method \
     FROM pg_catalog.pg_hba_file_rules \
     WHERE error IS NULL AND auth_method IN ('trust', 'peer', 'ident') \
     ORDER BY line_number LIMIT 20";

/// What the upstream did with one connection that offered no password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It let the role in without asking for one; the trusting hba lines, when readable.
    LetIn { rules: Vec<String> },
    /// It asked for a password (or other credentials), or refused the connection outright.
    Guarded,
    /// No answer to judge by: unreachable, no answer in time, starting up, out of slots.
    Unknown(String),
}

/// Starts a session as `role` offering no password and says what the server made of it.
pub(super) async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: &str,
    database: &str,
    any_role: bool,
) -> Result<Outcome> {
    let startup = StartupMessage {
        version: 196_608,
        params: vec![
            ("user".into(), role.into()),
            ("database".into(), database.into()),
            (
                "application_name".into(),
                "pgml-proxy password check".into(),
            ),
        ],
    };
    stream.write_all(&startup.encode()).await?;
    stream.flush().await?;
    let mut authenticated = false;
    loop {
        let frame = read_frame(stream).await?;
        match (frame.tag(), authenticated) {
            (b'R', false) if authentication::code(&frame)? == authentication::OK => {
                authenticated = true;
            }
            // A password, SASL, GSS... request: it wants credentials. Closing now is what a
            // client without a password does; Postgres does not log it.
            (b'R', false) => return Ok(Outcome::Guarded),
            (b'E', false) => {
                let fields = Fields::decode(&frame);
                return Ok(match fields.sqlstate() {
                    // cannot_connect_now, too_many_connections: no verdict on the hba line.
                    Some("57P03" | "53300") => {
                        Outcome::Unknown(fields.message().unwrap_or_default().to_owned())
                    }
                    _ => Outcome::Guarded,
                });
            }
            (b'E', true) => {
                let fields = Fields::decode(&frame);
                // Let in, then "role does not exist" or "not permitted to log in": for a named
                // role, nothing a client can use today; for the made-up one, a line that lets
                // any role in. Any other error (no such database...) comes after the hba line
                // let the role in.
                let refused_role = fields.sqlstate() == Some("28000");
                return Ok(if refused_role && !any_role {
                    Outcome::Guarded
                } else {
                    Outcome::LetIn { rules: Vec::new() }
                });
            }
            (b'Z', true) => {
                let rules = hba_rules(stream).await.unwrap_or_default();
                let _ = stream.write_all(Frame::new(b'X', &[]).as_bytes()).await;
                let _ = stream.flush().await;
                return Ok(Outcome::LetIn { rules });
            }
            // NoticeResponse, ParameterStatus, BackendKeyData, NegotiateProtocolVersion.
            (b'N' | b'S' | b'K' | b'v', _) => {}
            (tag, _) => {
                return Err(ProxyError::UpstreamProtocol(format!(
                    "unexpected message {:?} while checking authentication",
                    char::from(tag)
                )))
            }
        }
    }
}

/// The trusting lines of pg_hba.conf, as "line N: TYPE DATABASE USER ADDRESS METHOD", when the
/// session may read them; empty otherwise (not a superuser: permission denied).
async fn hba_rules<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<Vec<String>> {
    stream
        .write_all(Query::encode(HBA_RULES).as_bytes())
        .await?;
    stream.flush().await?;
    let mut rules = Vec::new();
    loop {
        let frame = read_frame(stream).await?;
        match frame.tag() {
            b'D' => {
                let values = crate::net::messages::data_row::decode(&frame)?;
                let text: Vec<String> = values
                    .iter()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .filter(|v| !v.is_empty())
                    .collect();
                if let Some((line, rest)) = text.split_first() {
                    rules.push(format!("line {line}: {}", rest.join(" ")));
                }
            }
            b'E' => rules.clear(),
            b'Z' => return Ok(rules),
            _ => {}
        }
    }
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Frame> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(ProxyError::UpstreamProtocol(format!(
            "invalid message length {len} while checking authentication"
        )));
    }
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await?;
    Ok(Frame::new(head[0], &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::messages::{data_row, error_response};

    fn auth(code: i32) -> Frame {
        Frame::new(b'R', &code.to_be_bytes())
    }

    /// Runs `ask` against a server that reads the startup packet and answers `answers`, and
    /// `then` to whatever the probe sends next (its Query).
    async fn against(answers: Vec<Frame>, then: Vec<Frame>, any_role: bool) -> Outcome {
        let (mut probe, mut server) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut len = [0u8; 4];
            server.read_exact(&mut len).await.unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            server.read_exact(&mut startup).await.unwrap();
            let text = String::from_utf8_lossy(&startup).into_owned();
            assert!(text.contains("user\0someone\0database\0db\0"), "{text:?}");
            for frame in answers {
                server.write_all(frame.as_bytes()).await.unwrap();
            }
            if !then.is_empty() {
                let query = read_frame(&mut server).await.unwrap();
                assert_eq!(query.tag(), b'Q');
                for frame in then {
                    server.write_all(frame.as_bytes()).await.unwrap();
                }
            }
            let mut rest = Vec::new();
            let _ = server.read_to_end(&mut rest).await;
        });
        let outcome = ask(&mut probe, "someone", "db", any_role).await.unwrap();
        drop(probe);
        server.await.unwrap();
        outcome
    }

    fn ready() -> Frame {
        Frame::new(b'Z', b"I")
    }

    #[tokio::test]
    async fn a_password_request_of_any_kind_means_guarded() {
        for code in [3, 5, 7, authentication::SASL] {
            assert_eq!(
                against(vec![auth(code)], vec![], false).await,
                Outcome::Guarded
            );
        }
    }

    #[tokio::test]
    async fn a_session_without_a_password_is_let_in_and_names_the_trusting_lines() {
        let values: Vec<Option<&[u8]>> = ["3", "local", "all", "all", "", "trust"]
            .iter()
            .map(|v| Some(v.as_bytes()))
            .collect();
        let row = data_row::encode(&values);
        let outcome = against(
            vec![
                auth(authentication::OK),
                Frame::new(b'S', b"a\0b\0"),
                ready(),
            ],
            vec![row, Frame::new(b'C', b"SELECT 1\0"), ready()],
            false,
        )
        .await;
        assert_eq!(
            outcome,
            Outcome::LetIn {
                rules: vec!["line 3: local all all trust".into()]
            }
        );
        // A role that may not read pg_hba_file_rules: let in all the same, no lines.
        let denied = error_response::encode("ERROR", "42501", "permission denied");
        let outcome = against(
            vec![auth(authentication::OK), ready()],
            vec![denied, ready()],
            false,
        )
        .await;
        assert_eq!(outcome, Outcome::LetIn { rules: vec![] });
    }

    #[tokio::test]
    async fn a_missing_role_let_in_counts_only_for_the_made_up_role() {
        let missing = || {
            vec![
                auth(authentication::OK),
                error_response::encode("FATAL", "28000", "role does not exist"),
            ]
        };
        assert_eq!(against(missing(), vec![], false).await, Outcome::Guarded);
        assert_eq!(
            against(missing(), vec![], true).await,
            Outcome::LetIn { rules: vec![] }
        );
        let no_database = vec![
            auth(authentication::OK),
            error_response::encode("FATAL", "3D000", "database does not exist"),
        ];
        assert_eq!(
            against(no_database, vec![], false).await,
            Outcome::LetIn { rules: vec![] }
        );
    }

    #[tokio::test]
    async fn refusals_guard_and_a_server_that_cannot_serve_yet_is_unknown() {
        let hba = error_response::encode("FATAL", "28000", "no pg_hba.conf entry");
        assert_eq!(against(vec![hba], vec![], true).await, Outcome::Guarded);
        let peer = error_response::encode("FATAL", "28000", "Peer authentication failed");
        assert_eq!(against(vec![peer], vec![], false).await, Outcome::Guarded);
        let starting =
            error_response::encode("FATAL", "57P03", "the database system is starting up");
        assert!(matches!(
            against(vec![starting], vec![], false).await,
            Outcome::Unknown(_)
        ));
    }
}
