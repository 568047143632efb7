//! `CREATE EXTENSION pgml` and `DROP EXTENSION pgml` through the proxy. There is no pgml
//! extension upstream (a managed Postgres cannot install one): the shim is what the proxy
//! installs instead. CREATE installs (or upgrades) the shim (anyone may: the proxy installs it
//! on first use anyway); DROP removes its functions and the pgml_proxy objects (tables in
//! schema pgml, datasets and the korvus catalog, are kept), and only for a superuser or a
//! member of the service role, the shim's owner (42501 `must be owner of extension pgml`
//! otherwise, as Postgres answers a non-owner).
//! "Exists" means: the shim is installed in this database.
//!
//! Postgres itself gives the answer, so transaction state stays exact: the statement is sent
//! as a DO block that raises the NOTICE or ERROR Postgres would (same text and SQLSTATE) or
//! does nothing, and its CommandComplete `DO` is relayed as `CREATE EXTENSION` or `DROP
//! EXTENSION`. Clients that look for the extension in `pg_extension` do not find it (it is not
//! an extension there); `pgml.version()` answers.

use super::shim::VERSION_QUERY;
use super::InterceptHook;
use crate::error::Result;
use crate::net::frame::Frame;
use crate::net::messages::command_complete;
use crate::session::io::SessionIo;

/// A `CREATE EXTENSION` or `DROP EXTENSION` naming pgml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionCommand {
    /// CREATE EXTENSION [IF NOT EXISTS] pgml [WITH] [SCHEMA s] [VERSION v] [CASCADE].
    Create {
        /// IF NOT EXISTS was given.
        if_not_exists: bool,
        /// The SCHEMA clause, lower-cased unless quoted.
        schema: Option<String>,
    },
    /// DROP EXTENSION [IF EXISTS] pgml [CASCADE | RESTRICT].
    Drop {
        /// IF EXISTS was given.
        if_exists: bool,
    },
}

impl ExtensionCommand {
    /// A CREATE into a schema other than pgml (PostgresML's schema is fixed).
    fn wrong_schema(&self) -> bool {
        matches!(self, ExtensionCommand::Create { schema: Some(s), .. } if s != "pgml")
    }

    /// The command tag Postgres ends the statement with.
    pub fn tag(&self) -> &'static str {
        match self {
            ExtensionCommand::Create { .. } => "CREATE EXTENSION",
            ExtensionCommand::Drop { .. } => "DROP EXTENSION",
        }
    }
}

/// Words of `sql` (one statement, an optional trailing `;`), or None when it holds anything
/// this simple reader does not follow (comments, strings, several statements).
fn words(sql: &str) -> Option<Vec<String>> {
    let body = sql.trim().trim_end_matches(';').trim_end();
    if body.contains(';') || body.contains("--") || body.contains("/*") {
        return None;
    }
    Some(
        body.split_whitespace()
            .map(|w| {
                if w.len() >= 2 && w.starts_with('"') && w.ends_with('"') {
                    w[1..w.len() - 1].to_owned()
                } else {
                    w.to_ascii_lowercase()
                }
            })
            .collect(),
    )
}

/// Recognises `CREATE EXTENSION ... pgml ...` and `DROP EXTENSION ... pgml ...`.
pub fn parse(sql: &str) -> Option<ExtensionCommand> {
    // Every Query that mentions pgml comes here: look no further than its first word.
    let first = sql.split_whitespace().next()?;
    if !first.eq_ignore_ascii_case("create") && !first.eq_ignore_ascii_case("drop") {
        return None;
    }
    let w = words(sql)?;
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["create", "extension", rest @ ..] => {
            let (if_not_exists, rest) = match rest {
                ["if", "not", "exists", rest @ ..] => (true, rest),
                rest => (false, rest),
            };
            let ["pgml", options @ ..] = rest else {
                return None;
            };
            let mut options: &[&str] = options;
            let mut schema = None;
            if let ["with", tail @ ..] = options {
                options = tail;
            }
            loop {
                match options {
                    [] => break,
                    ["schema", s, tail @ ..] => {
                        schema = Some((*s).to_owned());
                        options = tail;
                    }
                    ["version", _, tail @ ..] | ["from", _, tail @ ..] => options = tail,
                    ["cascade", tail @ ..] => options = tail,
                    _ => return None,
                }
            }
            Some(ExtensionCommand::Create {
                if_not_exists,
                schema,
            })
        }
        ["drop", "extension", rest @ ..] => {
            let (if_exists, rest) = match rest {
                ["if", "exists", rest @ ..] => (true, rest),
                rest => (false, rest),
            };
            match rest {
                ["pgml"] | ["pgml", "cascade"] | ["pgml", "restrict"] => {
                    Some(ExtensionCommand::Drop { if_exists })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// A DO block that raises `message` (a constant without quotes) at `level` with `state`.
fn raise(level: &str, message: &str, state: &str) -> String {
    format!("DO $pgml_proxy$ BEGIN RAISE {level} '{message}' USING ERRCODE = '{state}'; END $pgml_proxy$")
}

/// The DO block that makes Postgres answer `command` as it would answer it for a real
/// extension, given whether the shim `exists` (after the proxy did the work).
pub fn answer_sql(command: &ExtensionCommand, exists_before: bool, exists_now: bool) -> String {
    match command {
        _ if command.wrong_schema() => {
            raise(
                "EXCEPTION",
                "extension \"pgml\" must be installed in schema \"pgml\"",
                "0A000",
            )
        }
        ExtensionCommand::Create { if_not_exists, .. } if exists_before => {
            if *if_not_exists {
                raise(
                    "NOTICE",
                    "extension \"pgml\" already exists, skipping",
                    "42710",
                )
            } else {
                raise("EXCEPTION", "extension \"pgml\" already exists", "42710")
            }
        }
        ExtensionCommand::Create { .. } if !exists_now => raise(
            "EXCEPTION",
            "pgml-proxy could not install the pgml shim in this database (its log says why; pgml-proxy install --upstream ADMIN_URL installs it as an administrator)",
            "42501",
        ),
        ExtensionCommand::Drop { if_exists } if !exists_before => {
            if *if_exists {
                raise(
                    "NOTICE",
                    "extension \"pgml\" does not exist, skipping",
                    "00000",
                )
            } else {
                raise("EXCEPTION", "extension \"pgml\" does not exist", "42704")
            }
        }
        ExtensionCommand::Drop { .. } if exists_now => raise(
            "EXCEPTION",
            "pgml-proxy could not remove the pgml shim from this database (its log says why)",
            "42501",
        ),
        _ => "DO $pgml_proxy$ BEGIN END $pgml_proxy$".to_owned(),
    }
}

impl InterceptHook {
    /// A simple Query that is exactly one extension command: done here.
    pub(super) async fn on_extension_query(
        &mut self,
        command: &ExtensionCommand,
        io: &mut SessionIo,
    ) -> Result<()> {
        self.drain(io).await?;
        let sql = self.extension_command(command, io, true).await?;
        self.pending_tags.push_back(command.tag());
        io.send_upstream(&crate::net::messages::query::Query::encode(sql));
        Ok(())
    }

    /// A Parse that is exactly one extension command: the work is done now, the stand-in is
    /// prepared, and each execution of it answers with the command's tag.
    pub(super) async fn on_extension_parse(
        &mut self,
        command: &ExtensionCommand,
        parse: &crate::net::messages::parse::Parse<'_>,
        io: &mut SessionIo,
    ) -> Result<()> {
        let idle = io.state().upstream_idle();
        let sql = self.extension_command(command, io, idle).await?;
        let rewritten = crate::net::messages::parse::Parse {
            name: parse.name,
            sql: sql.as_bytes(),
            param_types: Vec::new(),
        }
        .encode();
        self.remember_extension(parse.name, command.tag())?;
        io.send_upstream(&rewritten);
        Ok(())
    }

    /// Does the work of `command` (install or remove the shim) and returns the statement to
    /// send upstream in its place (the caller arranges for its tag to be renamed). `idle`: the
    /// session itself may run private queries.
    pub(super) async fn extension_command(
        &mut self,
        command: &ExtensionCommand,
        io: &mut SessionIo,
        idle: bool,
    ) -> Result<String> {
        let before = self.shim_installed(io, idle).await?;
        if command.wrong_schema() {
            return Ok(answer_sql(command, before, before));
        }
        match command {
            ExtensionCommand::Create { .. } if !before => {
                self.shared.installed.forget(&self.database).await;
                if idle {
                    self.ensure_shim(io).await?;
                } else {
                    self.ensure_shim_via_service().await;
                }
            }
            ExtensionCommand::Drop { .. } if before => {
                // The service role does the removal for everyone in the database: only a role
                // that could drop an extension the service role owns may ask for it.
                if !self.may_drop(io, idle).await? {
                    return Ok(raise(
                        "EXCEPTION",
                        "must be owner of extension pgml",
                        "42501",
                    ));
                }
                if let Err(e) = self.shared.upcall.uninstall_shim(&self.database).await {
                    tracing::warn!(database = %self.database, error = %e, "DROP EXTENSION pgml: could not remove the shim");
                }
                self.shared.installed.forget(&self.database).await;
            }
            _ => {}
        }
        let now = self.shim_installed(io, idle).await?;
        Ok(answer_sql(command, before, now))
    }

    /// Whether the session's role is a superuser or a member of the service role (which owns
    /// the shim), as DROP EXTENSION requires of an extension's owner. Mid-pipeline it cannot be
    /// asked: no.
    async fn may_drop(&mut self, io: &mut SessionIo, idle: bool) -> Result<bool> {
        if !idle {
            return Ok(false);
        }
        let Ok(owner) = pgml_rewriter::quote_literal(&self.shared.upcall.role()) else {
            return Ok(false);
        };
        let sql = format!(
            "SELECT r.rolsuper OR coalesce(pg_catalog.pg_has_role(r.oid, \
               (SELECT o.oid FROM pg_catalog.pg_roles o WHERE o.rolname OPERATOR(pg_catalog.=) {owner}), 'MEMBER'), false) \
             FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER"
        );
        let result = self.private(io, sql).await?;
        Ok(result
            .rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .is_some_and(|v| v.as_ref() == b"t"))
    }

    /// Whether the shim (any version) is installed in this database.
    async fn shim_installed(&mut self, io: &mut SessionIo, idle: bool) -> Result<bool> {
        if idle {
            let result = self.private(io, VERSION_QUERY).await?;
            return Ok(result
                .rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .is_some());
        }
        Ok(
            match self.shared.upcall.shim_version(&self.database).await {
                Ok(version) => version.is_some(),
                Err(_) => self.shared.installed.contains(&self.database).await,
            },
        )
    }

    /// Bind of an extension command's stand-in: its portal answers with the command's tag.
    pub(super) fn on_extension_bind(&mut self, frame: &Frame) {
        if self.extension_statements.is_empty() {
            return;
        }
        let Ok(bind) = crate::net::messages::bind::Bind::decode(frame) else {
            return;
        };
        match self.extension_statements.get(bind.statement) {
            Some(tag) => {
                self.extension_portals.insert(bind.portal.to_owned(), tag);
            }
            None => {
                self.extension_portals.remove(bind.portal);
            }
        }
    }

    /// Execute of a portal: an extension command's stand-in gets its tag renamed.
    pub(super) fn on_execute(&mut self, frame: &Frame) {
        if self.extension_portals.is_empty() {
            return;
        }
        let body = frame.body();
        let portal = body.split(|&b| b == 0).next().unwrap_or_default();
        if let Some(tag) = self.extension_portals.get(portal) {
            self.pending_tags.push_back(tag);
        }
    }

    /// The CommandComplete the client sees: `DO` of an extension command's stand-in becomes
    /// that command's tag.
    pub(super) fn rename_command_complete(&mut self, frame: &Frame) -> Option<Frame> {
        if self.pending_tags.is_empty() || frame.body() != b"DO\0" {
            return None;
        }
        self.pending_tags.pop_front().map(command_complete::encode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_commands_are_recognised() {
        let create = |i, s: Option<&str>| ExtensionCommand::Create {
            if_not_exists: i,
            schema: s.map(str::to_owned),
        };
        assert_eq!(parse("CREATE EXTENSION pgml"), Some(create(false, None)));
        assert_eq!(
            parse("create extension if not exists \"pgml\";"),
            Some(create(true, None))
        );
        assert_eq!(
            parse("CREATE EXTENSION IF NOT EXISTS pgml WITH SCHEMA pgml VERSION '2.10.0'"),
            Some(create(true, Some("pgml")))
        );
        assert_eq!(
            parse("CREATE EXTENSION pgml WITH SCHEMA public CASCADE"),
            Some(create(false, Some("public")))
        );
        assert_eq!(
            parse("DROP EXTENSION IF EXISTS pgml CASCADE"),
            Some(ExtensionCommand::Drop { if_exists: true })
        );
        assert_eq!(parse("CREATE EXTENSION vector"), None);
        assert_eq!(parse("CREATE EXTENSION pgml; SELECT 1"), None);
        assert_eq!(parse("DROP EXTENSION pgml, vector"), None);
        assert_eq!(parse("SELECT 'CREATE EXTENSION pgml'"), None);
    }

    #[test]
    fn answers_mirror_postgres() {
        let create = ExtensionCommand::Create {
            if_not_exists: true,
            schema: None,
        };
        assert!(answer_sql(&create, true, true).contains("already exists, skipping"));
        assert_eq!(
            answer_sql(&create, false, true),
            "DO $pgml_proxy$ BEGIN END $pgml_proxy$"
        );
        let drop = ExtensionCommand::Drop { if_exists: false };
        assert!(answer_sql(&drop, false, false).contains("42704"));
    }
}
