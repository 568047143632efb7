//! Upstream connection strings, read as libpq reads them (`postgres://user:pw@host:port/db`,
//! `?host=/run/postgresql`, `sslmode=`, `sslrootcert=`), and shown without their passwords.

use std::path::PathBuf;

use crate::error::{ProxyError, Result};

/// `--upstream-sslmode`: whether the proxy encrypts its connections to the upstream, and
/// whether it authenticates the server, with libpq's meanings.
/// The variants are in order of strictness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum SslMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS when the server supports it, plain otherwise (no certificate check).
    Prefer,
    /// TLS or fail. Without a root certificate the server's certificate is not checked (a
    /// man in the middle can read everything); with `sslrootcert=` it is, as `verify-ca`.
    Require,
    /// TLS, the certificate chain checked against `sslrootcert=` (not the host name).
    VerifyCa,
    /// TLS, the chain checked against `sslrootcert=` and the host name against the certificate.
    VerifyFull,
}

/// What the proxy takes from an upstream URL.
pub(crate) struct ParsedUrl {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) sslmode: Option<SslMode>,
    pub(crate) root_cert: Option<PathBuf>,
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
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
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
            "sslrootcert" => root_cert = Some(PathBuf::from(value)),
            "sslmode" => {
                sslmode = Some(match value.as_str() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
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
    })
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
        let Err(err) = Upstream::from_url("postgres://u:hunter2@h:bad/db", SslMode::Disable) else {
            panic!("a bad port");
        };
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
