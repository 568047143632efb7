//! The start-up check that the upstream asks for a password. The proxy relays each client's
//! authentication and does not authenticate clients itself, so a role the upstream lets the
//! proxy's own connections in as without one (pg_hba.conf `trust`, or `peer`/`ident` as the
//! proxy's OS user) is open to every client that reaches `--listen`. Owns the probe, the
//! refusal and its message (the exchange with the server is in `ask`); the relayed
//! authentication itself lives in `session::auth`.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::error::{ProxyError, Result};
use crate::net::upstream::Upstream;
use crate::net::url::parse_url;

mod ask;

use ask::{ask, Outcome};

/// The flag that lets the proxy start anyway, for messages.
pub const FLAG: &str = "--dangerously-allow-passwordless-upstream";

/// How long one probe connection may take, TLS and all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the start waits for the probes before going on and finishing them in the
/// background (an upstream that is down, or does not answer, must not hold up /healthz).
const START_WAIT: Duration = Duration::from_secs(3);

/// Pause between tries while the upstream cannot be asked.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// The roles and database the check connects as, without a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Roles a client is likely to name and an hba line to single out: `postgres`, the
    /// proxy's OS user (what `peer` and `ident` map to), the users of the URLs it was given.
    roles: Vec<String>,
    /// A role that does not exist: let in, it shows a line that lets any role in (`trust`).
    any_role: String,
    /// The database of the upstream URL, else `postgres`.
    database: String,
}

impl Probe {
    /// The probe for `serve`: `postgres`, the OS user, the users and database named in
    /// `--upstream` and `--service-url`.
    pub async fn for_serve(upstream_url: Option<&str>, service_url: Option<&str>) -> Probe {
        let parsed = |url: Option<&str>| url.and_then(|u| parse_url(u).ok());
        let (upstream, service) = (parsed(upstream_url), parsed(service_url));
        let mut roles = vec!["postgres".to_owned()];
        roles.extend(os_user().await);
        roles.extend(upstream.as_ref().and_then(|u| u.user.clone()));
        roles.extend(service.as_ref().and_then(|u| u.user.clone()));
        Probe::new(
            roles,
            upstream
                .and_then(|u| u.database)
                .unwrap_or_else(|| "postgres".to_owned()),
        )
    }

    fn new(mut roles: Vec<String>, database: String) -> Probe {
        let mut seen = std::collections::HashSet::new();
        roles.retain(|r| !r.is_empty() && seen.insert(r.clone()));
        // Not a secret, only a name no one has given a role: the clock and the process id.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Probe {
            roles,
            any_role: format!(
                "pgml_proxy_check_{:x}_{:x}",
                std::process::id(),
                nanos & 0xffff_ffff
            ),
            database,
        }
    }
}

/// The proxy's OS user name (`id -un`: names from NSS too), which `peer` and `ident` lines map
/// to a role of the same name.
async fn os_user() -> Option<String> {
    let out = tokio::process::Command::new("id")
        .arg("-un")
        .output()
        .await
        .ok()?;
    let name = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !name.is_empty())
        .then_some(name)
        .or_else(|| std::env::var("USER").ok())
}

/// A role the upstream let in without a password.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LetIn {
    role: String,
    /// The role does not exist: the line lets any role in.
    any_role: bool,
    rules: Vec<String>,
}

/// What the probes found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Findings {
    let_in: Vec<LetIn>,
    /// Why some probes could not tell (the first reason).
    unknown: Option<String>,
}

/// Checks the upstream before `serve` listens. Roles let in without a password make it an
/// error unless `allow` (then a warning). When the upstream cannot be asked yet (down, not
/// answering), the proxy starts and the returned [`Guard`] keeps asking.
pub async fn guard(upstream: &Upstream, probe: Probe, allow: bool) -> Result<Guard> {
    match tokio::time::timeout(START_WAIT, check(upstream, &probe)).await {
        Ok(findings) if findings.unknown.is_none() || !findings.let_in.is_empty() => {
            judge(upstream, &findings, allow)?;
            Ok(Guard { late: None })
        }
        answer => {
            let why = match answer {
                Ok(findings) => findings.unknown.unwrap_or_default(),
                Err(_) => format!("no answer within {START_WAIT:?}"),
            };
            tracing::warn!(
                upstream = %upstream.addr(),
                reason = %why,
                "cannot check yet whether the upstream asks for passwords; checking again until it answers"
            );
            let upstream = upstream.clone();
            let late = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RETRY_EVERY).await;
                    let findings = check(&upstream, &probe).await;
                    if findings.unknown.is_none() || !findings.let_in.is_empty() {
                        return judge(&upstream, &findings, allow).err();
                    }
                }
            });
            Ok(Guard { late: Some(late) })
        }
    }
}

/// A check still running after the start (see [`guard`]).
pub struct Guard {
    late: Option<JoinHandle<Option<ProxyError>>>,
}

impl Guard {
    /// `shutdown`, or else the refusal of a check that finishes after the start: the future to
    /// serve until, and where to find that refusal once it returned.
    pub fn or_refusal(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> (
        impl Future<Output = ()>,
        tokio::sync::oneshot::Receiver<ProxyError>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let refused = async move {
            match self.late {
                Some(late) => match late.await {
                    Ok(Some(err)) => err,
                    _ => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let until = async move {
            tokio::select! {
                () = shutdown => {}
                err = refused => {
                    tracing::error!(error = %err, "stopping");
                    let _ = tx.send(err);
                }
            }
        };
        (until, rx)
    }
}

/// The refusal (or, with `allow`, the warning) the findings call for.
fn judge(upstream: &Upstream, findings: &Findings, allow: bool) -> Result<()> {
    if findings.let_in.is_empty() {
        tracing::debug!(upstream = %upstream.addr(), "the upstream asks for passwords");
        return Ok(());
    }
    let what = describe(upstream, &findings.let_in);
    if allow {
        tracing::warn!(
            "{FLAG}: {what}; every client that can reach the proxy can log in that way without \
             a password"
        );
        return Ok(());
    }
    Err(ProxyError::Config(format!(
        "refusing to start: {what}. The proxy does not authenticate clients itself: it relays \
         each client's authentication to the upstream, so every client that can reach --listen \
         would log in like this without a password{lends}. Make the pg_hba.conf line that \
         matches these connections ask for a password (scram-sha-256){tcp}, or, if everyone \
         who can reach the proxy may log in without one, start with {FLAG}",
        lends = if upstream.is_unix_socket() {
            " (a `peer` or `ident` line lends them the proxy's own OS user)"
        } else {
            ""
        },
        tcp = if upstream.is_unix_socket() {
            ", or give --upstream a TCP address whose host line asks for one"
        } else {
            ""
        },
    )))
}

/// "the upstream ADDR let role "postgres" in without asking for a password (pg_hba.conf ...)".
fn describe(upstream: &Upstream, let_in: &[LetIn]) -> String {
    let via = if upstream.is_unix_socket() {
        "over its Unix socket (a `local` line)"
    } else {
        "over TCP (a `host` line)"
    };
    let roles: Vec<String> = let_in
        .iter()
        .map(|l| {
            if l.any_role {
                format!("{:?}, a role that does not exist (so any role)", l.role)
            } else {
                format!("{:?}", l.role)
            }
        })
        .collect();
    let mut rules: Vec<&str> = let_in
        .iter()
        .flat_map(|l| l.rules.iter().map(String::as_str))
        .collect();
    rules.sort_unstable();
    rules.dedup();
    let rules = if rules.is_empty() {
        String::new()
    } else {
        format!(
            "; pg_hba.conf lines that let roles in without one: {}",
            rules.join("; ")
        )
    };
    format!(
        "the upstream {} let the proxy in as {} {via} without asking for a password{rules}",
        upstream.addr(),
        roles.join(", ")
    )
}

/// Probes every role of `probe` at once.
async fn check(upstream: &Upstream, probe: &Probe) -> Findings {
    let attempts = probe
        .roles
        .iter()
        .map(|role| (role, false))
        .chain(std::iter::once((&probe.any_role, true)))
        .map(|(role, any_role)| async move {
            let outcome = tokio::time::timeout(PROBE_TIMEOUT, async {
                let mut stream = upstream.connect().await?;
                ask(&mut stream, role, &probe.database, any_role).await
            })
            .await
            .unwrap_or_else(|_| {
                Ok(Outcome::Unknown(format!(
                    "no answer within {PROBE_TIMEOUT:?}"
                )))
            })
            .unwrap_or_else(|e| Outcome::Unknown(e.to_string()));
            (role.clone(), any_role, outcome)
        });
    let mut findings = Findings::default();
    for (role, any_role, outcome) in futures::future::join_all(attempts).await {
        match outcome {
            Outcome::LetIn { rules } => findings.let_in.push(LetIn {
                role,
                any_role,
                rules,
            }),
            Outcome::Guarded => {}
            Outcome::Unknown(why) => {
                findings.unknown.get_or_insert(why);
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::upstream::SslMode;

    #[test]
    fn the_refusal_names_the_roles_the_lines_and_the_flag_and_the_flag_allows() {
        let socket = Upstream::unix("/run/pg/.s.PGSQL.5432".into());
        let findings = Findings {
            let_in: vec![
                LetIn {
                    role: "root".into(),
                    any_role: false,
                    rules: vec!["line 1: local all all peer".into()],
                },
                LetIn {
                    role: "pgml_proxy_check_1".into(),
                    any_role: true,
                    rules: vec![],
                },
            ],
            unknown: None,
        };
        let err = judge(&socket, &findings, false).unwrap_err().to_string();
        for part in [
            "\"root\"",
            "any role",
            "line 1: local all all peer",
            "Unix socket",
            "peer",
            FLAG,
        ] {
            assert!(err.contains(part), "{part} missing: {err}");
        }
        assert!(judge(&socket, &findings, true).is_ok());
        assert!(judge(&socket, &Findings::default(), false).is_ok());
        let tcp = Upstream::new("db", 5432, SslMode::Disable).unwrap();
        let err = judge(&tcp, &findings, false).unwrap_err().to_string();
        assert!(err.contains("over TCP") && err.contains("db:5432"), "{err}");
    }

    #[tokio::test]
    async fn the_probe_tries_postgres_the_os_user_and_the_urls_users_once_each() {
        let probe = Probe::for_serve(
            Some("postgres://app:pw@db/appdb"),
            Some("postgres://pgml_proxy_service:pw@db/appdb?sslmode=require"),
        )
        .await;
        assert_eq!(probe.roles[0], "postgres");
        assert!(probe.roles.contains(&"app".to_owned()));
        assert!(probe.roles.contains(&"pgml_proxy_service".to_owned()));
        assert_eq!(probe.database, "appdb");
        assert!(probe.any_role.starts_with("pgml_proxy_check_"));
        let again = Probe::new(
            vec!["postgres".into(), "postgres".into(), String::new()],
            "d".into(),
        );
        assert_eq!(again.roles, vec!["postgres".to_owned()]);
        let bare = Probe::for_serve(None, None).await;
        assert_eq!(bare.database, "postgres");
    }
}
