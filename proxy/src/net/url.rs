//! Upstream connection strings, read as libpq reads them (`postgres://user:pw@host:port/db`,
//! `?host=/run/postgresql`, `sslmode=`, `sslrootcert=`), libpq's sslmode rules (which mode a
//! URL and the flag give, and its default), and URLs shown without their passwords.

use std::path::PathBuf;

use crate::error::{ProxyError, Result};

/// `--upstream-sslmode` and a URL's `sslmode=`: whether the proxy encrypts its connections to
/// the upstream, and whether it authenticates the server, with libpq's meanings. Unix sockets
/// never use TLS, whatever the mode. The variants are in order of strictness. libpq's `allow`
/// (plain first, TLS only after the server refused the plain connection) is not offered: a
/// relay cannot retry a client's refused start-up, so a URL that asks for it is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum SslMode {
    /// Plain TCP. (The type's default, for the proxy's own embedded Postgres; an upstream URL
    /// without a mode gets libpq's default, [`SslMode::LIBPQ_DEFAULT`].)
    #[default]
    Disable,
    /// TLS when the server offers it; plain when it answers the SSLRequest with `N` or the TLS
    /// handshake fails (then once more, on a new connection), as libpq does. The certificate is
    /// checked only against an `sslrootcert=` (its chain, as libpq does when a root file exists).
    Prefer,
    /// TLS or fail. Without a root certificate the server's certificate is not checked (a
    /// man in the middle can read everything); with `sslrootcert=` it is, as `verify-ca`.
    Require,
    /// TLS, the certificate chain checked against `sslrootcert=` (not the host name).
    VerifyCa,
    /// TLS, the chain checked against `sslrootcert=` and the host name against the certificate.
    VerifyFull,
}

impl SslMode {
    /// libpq's default `sslmode`, for a URL that names none and no `--upstream-sslmode`.
    pub const LIBPQ_DEFAULT: SslMode = SslMode::Prefer;

    /// The mode as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode for a URL's `sslmode=` (`from_url`) and `--upstream-sslmode` (`flag`): either
    /// one alone; the stricter when both are given (a URL that asks for TLS never silently gets
    /// less); libpq's default when neither is.
    pub fn resolve(from_url: Option<SslMode>, flag: Option<SslMode>) -> SslMode {
        match (from_url, flag) {
            (Some(url), Some(flag)) => url.max(flag),
            (Some(mode), None) | (None, Some(mode)) => mode,
            (None, None) => SslMode::LIBPQ_DEFAULT,
        }
    }
}

/// What the proxy takes from an upstream URL.
pub(crate) struct ParsedUrl {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) sslmode: Option<SslMode>,
    pub(crate) root_cert: Option<PathBuf>,
    /// The user named in the URL (`user@` or `user=`), if any.
    pub(crate) user: Option<String>,
    /// The database named in the URL (`/db` or `dbname=`), if any.
    pub(crate) database: Option<String>,
}

pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl> {
    let bad = |why: &str| {
        ProxyError::Config(format!("invalid upstream URL {:?}: {why}", redact_url(url)))
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("expected postgres://HOST:PORT"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (host, tail.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let mut host = percent_decode(host).ok_or_else(|| bad("invalid %-escape in host"))?;
    let mut port = port.map(str::to_owned);
    let mut user = match userinfo.map(|u| u.split_once(':').map_or(u, |(user, _)| user)) {
        Some(user) => Some(percent_decode(user).ok_or_else(|| bad("invalid %-escape in user"))?),
        None => None,
    };
    let path = rest[authority.len()..]
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_start_matches('/');
    let mut database = match path {
        "" => None,
        db => Some(percent_decode(db).ok_or_else(|| bad("invalid %-escape in database"))?),
    };
    let mut root_cert = None;
    let mut sslmode = None;
    // libpq's query parameters override the authority (`postgres:///db?host=/run/postgresql`).
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| bad("invalid %-escape"))?;
        match key {
            "host" => host = value,
            "port" => port = Some(value),
            "user" => user = Some(value),
            "dbname" => database = Some(value),
            // libpq's `system` (the operating system's trusted CAs, with verify-full forced)
            // is not implemented: say so rather than look for a file named "system".
            "sslrootcert" if value == "system" => {
                return Err(bad(
                    "sslrootcert=system is not supported: name the file with the CA \
                     certificate(s) the server's certificate chains to",
                ))
            }
            "sslrootcert" => root_cert = Some(PathBuf::from(value)),
            "sslmode" => {
                sslmode = Some(match value.as_str() {
                    "disable" => SslMode::Disable,
                    "allow" => {
                        return Err(bad(
                            "sslmode=allow is not supported (libpq tries TLS only after the \
                             server refused a plain start-up, which a relay cannot retry): use \
                             prefer, which tries TLS first, or disable",
                        ))
                    }
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    _ => return Err(bad("invalid sslmode")),
                })
            }
            _ => {}
        }
    }
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
        None => 5432,
    };
    Ok(ParsedUrl {
        host,
        port,
        sslmode,
        root_cert,
        user: user.filter(|u| !u.is_empty()),
        database: database.filter(|d| !d.is_empty()),
    })
}

/// `url` with `sslmode=mode` added when it names no sslmode itself, so that a mode chosen
/// outside the URL (a flag) reaches whatever reads the URL alone.
pub fn with_default_sslmode(url: &str, mode: SslMode) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query
        .split('&')
        .any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == "sslmode")
    {
        return url.to_owned();
    }
    let separator = match query {
        "" if url.ends_with('?') => "",
        "" => "?",
        _ => "&",
    };
    format!("{url}{separator}sslmode={}", mode.as_str())
}

/// `url` with any password (in the user info or a `password=` parameter) shown as `***`, for
/// logs, errors and --print-config: `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::upstream::Upstream;

    #[test]
    fn passwords_are_redacted_and_the_rest_kept() {
        let cases = [
            ("postgres://u:pw@h:5/db", "postgres://u:***@h:5/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgresql://u:p%40ss@h?sslmode=require&password=x",
                "postgresql://u:***@h?sslmode=require&password=***",
            ),
            ("tei+http://tok:en@host:80", "tei+http://tok:***@host:80"),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
        let Err(err) = Upstream::from_url("postgres://u:hunter2@h:bad/db", Some(SslMode::Disable))
        else {
            panic!("a bad port");
        };
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_sslmode_is_the_urls_or_the_flags_the_stricter_of_both_and_else_prefer() {
        use SslMode::*;
        assert_eq!(SslMode::resolve(None, None), Prefer);
        assert_eq!(SslMode::resolve(Some(Disable), None), Disable);
        assert_eq!(SslMode::resolve(None, Some(Disable)), Disable);
        assert_eq!(SslMode::resolve(Some(Require), Some(Disable)), Require);
        assert_eq!(
            SslMode::resolve(Some(Disable), Some(VerifyFull)),
            VerifyFull
        );
    }

    #[test]
    fn allow_and_sslrootcert_system_are_refused_with_what_to_use_instead() {
        let Err(err) = parse_url("postgres://h/db?sslmode=allow") else {
            panic!("allow accepted");
        };
        assert!(err.to_string().contains("prefer"), "{err}");
        let Err(err) = parse_url("postgres://h/db?sslmode=verify-full&sslrootcert=system") else {
            panic!("system accepted");
        };
        assert!(err.to_string().contains("sslrootcert=system"), "{err}");
    }

    #[test]
    fn user_and_database_come_from_the_authority_path_or_parameters() {
        let parsed = parse_url("postgres://ap%40p:pw@h:1/my%20db?sslmode=prefer").unwrap();
        assert_eq!(parsed.user.as_deref(), Some("ap@p"));
        assert_eq!(parsed.database.as_deref(), Some("my db"));
        assert_eq!(parsed.sslmode, Some(SslMode::Prefer));
        let parsed = parse_url("postgresql:///?host=/run/pg&user=u2&dbname=d2").unwrap();
        assert_eq!(
            (parsed.user.as_deref(), parsed.database.as_deref()),
            (Some("u2"), Some("d2"))
        );
        let parsed = parse_url("postgres://h:1").unwrap();
        assert_eq!((parsed.user, parsed.database), (None, None));
    }

    #[test]
    fn a_default_sslmode_is_added_only_where_the_url_names_none() {
        assert_eq!(
            with_default_sslmode("postgres://u:p@h/db", SslMode::Disable),
            "postgres://u:p@h/db?sslmode=disable"
        );
        assert_eq!(
            with_default_sslmode("postgres://h/db?application_name=x", SslMode::Require),
            "postgres://h/db?application_name=x&sslmode=require"
        );
        assert_eq!(
            with_default_sslmode("postgres://h/db?sslmode=verify-full", SslMode::Disable),
            "postgres://h/db?sslmode=verify-full"
        );
    }
}
