//! Who runs an install and where: the connected role's rights, the database, where pgvector
//! lives (read-only facts for the plan, doctor and their messages). The service role's own
//! state is role.rs's.

use crate::intercept::shim::pg_error;

/// Who is connected, to which database, and what pgml-proxy needs there; read-only.
#[derive(Debug)]
pub struct Installer {
    /// `server_version_num`, e.g. 160004.
    pub server_version: i32,
    /// The database's name.
    pub database: String,
    /// The connected role's name.
    pub user: String,
    /// The connected role is a superuser.
    pub superuser: bool,
    /// The connected role has CREATEROLE.
    pub createrole: bool,
    /// The connected role owns the database.
    pub owns_database: bool,
    /// The connected role may create schemas in the database.
    pub create_on_database: bool,
    /// The schema extension vector was created in (None: not created in this database).
    pub vector_schema: Option<String>,
    /// The version of extension vector the server offers (None: not available at all).
    pub vector_available: Option<String>,
}

impl Installer {
    /// What the connected role may do, in words (for doctor and install's messages).
    pub fn describe(&self) -> String {
        let owner = if self.owns_database {
            format!("owns database {}", self.database)
        } else {
            format!("does not own database {}", self.database)
        };
        if self.superuser {
            format!("{}: superuser", self.user)
        } else if self.createrole {
            format!("{}: CREATEROLE admin, not a superuser, {owner}", self.user)
        } else {
            format!("{}: neither a superuser nor CREATEROLE, {owner}", self.user)
        }
    }
}

/// Reads who is connected and where pgvector lives (found through pg_extension, never
/// through search_path: managed providers put it in `extensions`, `public` or their own).
/// An unnamed statement: doctor may run it through a transaction-mode pooler.
pub async fn installer(client: &tokio_postgres::Client) -> Result<Installer, String> {
    let row = client
        .query_typed_one(
            "SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4,
                    pg_catalog.current_database()::pg_catalog.text, r.rolname::pg_catalog.text,
                    r.rolsuper, r.rolcreaterole, d.datdba = r.oid,
                    pg_catalog.has_database_privilege(d.oid, 'CREATE'),
                    (SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_extension e
                       JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                      WHERE e.extname = 'vector'),
                    (SELECT a.default_version FROM pg_catalog.pg_available_extensions a
                      WHERE a.name = 'vector')
               FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
              WHERE r.rolname = CURRENT_USER
                AND d.datname = pg_catalog.current_database()",
            &[],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    Ok(Installer {
        server_version: row.get(0),
        database: row.get(1),
        user: row.get(2),
        superuser: row.get(3),
        createrole: row.get(4),
        owns_database: row.get(5),
        create_on_database: row.get(6),
        vector_schema: row.get(7),
        vector_available: row.get(8),
    })
}

/// How to get pgvector into a database, for messages.
pub fn create_vector_hint(database: &str) -> String {
    format!(
        "connect to database {database} as a role allowed to create extensions and run \
         `CREATE EXTENSION vector` (Supabase: `CREATE EXTENSION vector SCHEMA extensions`; \
         RDS, Cloud SQL and Neon let their admin role run `CREATE EXTENSION vector`)"
    )
}
