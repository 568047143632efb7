//! `--config FILE`: every command-line option can also come from a TOML file. Keys are the
//! long option names (`listen = "0.0.0.0:6432"`, `max-connections = 200`, `preload = ["m1"]`);
//! they are applied as `PGML_PROXY_<NAME>` environment variables that are not already set, so
//! the precedence is flag > environment > file > default.

use std::path::{Path, PathBuf};

use crate::error::{ProxyError, Result};

/// The config file named by `--config FILE`/`--config=FILE` in `args`, else by PGML_PROXY_CONFIG.
pub fn config_path(args: &[String]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("PGML_PROXY_CONFIG").map(PathBuf::from)
}

/// The environment variables a config file's text stands for, in file order.
pub fn env_from_toml(text: &str, origin: &Path) -> Result<Vec<(String, String)>> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| ProxyError::Config(format!("{}: {e}", origin.display())))?;
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(ProxyError::Config(format!(
                        "{}: {key}: list items must be strings, got {other:?}",
                        origin.display()
                    ))),
                })
                .collect::<Result<Vec<_>>>()?
                .join(","),
            other => {
                return Err(ProxyError::Config(format!(
                    "{}: {key}: unsupported value {other:?}",
                    origin.display()
                )))
            }
        };
        let name = format!("PGML_PROXY_{}", key.replace('-', "_").to_ascii_uppercase());
        out.push((name, value));
    }
    Ok(out)
}

/// Reads the config file (if any) and exports its settings as environment variables that are
/// not already set. Call before the CLI is parsed and before any thread starts.
pub fn apply(args: &[String]) -> Result<Option<PathBuf>> {
    let Some(path) = config_path(args) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ProxyError::Config(format!("cannot read config file {}: {e}", path.display()))
    })?;
    for (name, value) in env_from_toml(&text, &path)? {
        if std::env::var_os(&name).is_none() {
            std::env::set_var(name, value);
        }
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_become_proxy_environment_variables() {
        let env = env_from_toml(
            "listen = \"0.0.0.0:7000\"\nmax-connections = 5\noffline = true\npreload = [\"a\", \"b\"]\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(
            env,
            vec![
                ("PGML_PROXY_LISTEN".into(), "0.0.0.0:7000".into()),
                ("PGML_PROXY_MAX_CONNECTIONS".into(), "5".into()),
                ("PGML_PROXY_OFFLINE".into(), "true".into()),
                ("PGML_PROXY_PRELOAD".into(), "a,b".into()),
            ]
        );
        assert!(env_from_toml("listen = [1]", Path::new("x.toml")).is_err());
        assert!(env_from_toml("listen = ", Path::new("x.toml")).is_err());
    }

    #[test]
    fn config_flag_is_found_in_both_spellings() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["p", "serve", "--config", "a.toml"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_path(&args(&["p", "--config=b.toml", "serve"])),
            Some(PathBuf::from("b.toml"))
        );
    }
}
