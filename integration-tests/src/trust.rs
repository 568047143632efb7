//! Test-only identities: a role that logs in without a password (`trust` lines put first in
//! the embedded Postgres' pg_hba.conf, so hand-written protocol clients need no SCRAM), and a
//! test certificate authority for TLS tests (the bundled Postgres is built without TLS).

use std::fs;
use std::path::PathBuf;

use crate::{conf_load_time, psql_script, scratch_dir, stack, wait_for_reload};

/// Creates `role` (dropped first), runs `setup` (SQL run after the role exists, before the
/// reload: tables and grants), and puts `trust` lines for it over TCP from 127.0.0.1 and over
/// the Unix socket at the top of pg_hba.conf; returns once new sessions see them.
pub fn add_trust_role(role: &str, setup: &str) {
    let script = format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; {setup} \
        DO $$ DECLARE f text := current_setting('hba_file'); old text := pg_read_file(f); BEGIN \
          EXECUTE format($q$COPY (SELECT l FROM ( \
            SELECT l, 0 AS o, n FROM unnest(ARRAY[ \
              'host all {role} 127.0.0.1/32 trust', \
              'local all {role} trust']) WITH ORDINALITY AS a(l, n) \
            UNION ALL \
            SELECT replace(l, E'\\t', ' '), 1, n \
              FROM regexp_split_to_table(%L, E'\\n') WITH ORDINALITY AS b(l, n) \
          ) s ORDER BY o, n) TO %L$q$, old, f); \
        END $$; SELECT pg_reload_conf();\n"
    );
    let url = stack().direct_url();
    let before = conf_load_time(&url);
    let (ok, out, err) = psql_script(&url, &scratch_dir().join(format!("trust-{role}")), &script);
    assert!(ok && !err.contains("ERROR"), "{out}\n{err}");
    wait_for_reload(&url, &before);
}

/// A test CA, and server certificates it signs.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    /// A self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { cert, key }
    }

    /// Writes the CA certificate; its path.
    pub fn write_root(&self, file: &str) -> PathBuf {
        let path = scratch_dir().join(file);
        fs::write(&path, self.cert.pem()).expect("writing the CA certificate");
        path
    }

    /// Writes a server certificate for `host` and its key; their paths.
    pub fn write_server(&self, host: &str, file: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(vec![host.to_owned()]).expect("server parameters");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        let cert_path = scratch_dir().join(format!("{file}.crt"));
        let key_path = scratch_dir().join(format!("{file}.key"));
        fs::write(&cert_path, cert.pem()).expect("writing the server certificate");
        fs::write(&key_path, key.serialize_pem()).expect("writing the server key");
        (cert_path, key_path)
    }
}
