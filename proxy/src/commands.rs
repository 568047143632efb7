//! The small subcommands: `embed` (texts on stdin, vectors on stdout) and `install` (the
//! upstream shim into one database).

use crate::cli::{EmbedArgs, InstallArgs};
use crate::error::{ProxyError, Result};

/// `pgml-proxy embed`: one JSON string per input line, one JSON array per output line.
pub async fn embed(args: EmbedArgs) -> Result<()> {
    let engine = pgml_engine::Engine::new(args.engine.engine_config())
        .map_err(|e| ProxyError::Config(format!("embedding engine: {e}")))?;
    let kwargs: serde_json::Value = serde_json::from_str(&args.kwargs)
        .map_err(|e| ProxyError::Config(format!("--kwargs is not valid JSON: {e}")))?;
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let stdout = tokio::io::stdout();
    pgml_engine::embed_json_lines(&engine, &args.model, &kwargs, stdin, stdout)
        .await
        .map(|_| ())
        .map_err(|e| ProxyError::Config(e.to_string()))
}

/// `pgml-proxy install`: installs or upgrades the shim through a direct connection.
pub async fn install(args: InstallArgs) -> Result<()> {
    let (client, connection) = tokio_postgres::connect(&args.upstream, tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            ProxyError::Config(format!("cannot connect to {}: {e}", redact(&args.upstream)))
        })?;
    let task = tokio::spawn(connection);
    let installed = crate::shim::ensure_installed(&client)
        .await
        .map_err(|e| ProxyError::Config(format!("installing the shim: {e}")))?;
    drop(client);
    let _ = task.await;
    if installed {
        println!("pgml shim version {} installed", crate::shim::SHIM_VERSION);
    } else {
        println!(
            "pgml shim version {} already installed",
            crate::shim::SHIM_VERSION
        );
    }
    Ok(())
}

/// A connection URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
