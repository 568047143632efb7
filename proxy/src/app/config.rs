//! `--config FILE`: every command-line option can also come from a TOML file. Keys are the
//! long option names (`listen = "0.0.0.0:6432"`, `max-connections = 200`, `preload = ["m1"]`).
//! The file's settings are merged into the command line for the options that neither a flag
//! nor a `PGML_PROXY_*` environment variable set, so the precedence is
//! flag > environment > file > default. The process environment is never modified.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use super::cli::Cli;
use crate::error::{ProxyError, Result};

/// The config file named by `--config FILE`/`--config=FILE` in `args`, else by PGML_PROXY_CONFIG.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("PGML_PROXY_CONFIG").map(PathBuf::from)
}

/// One setting of a config file: its long option name and its values as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The long option name (`max-connections`).
    pub key: String,
    /// One value, or one per list item.
    pub values: Vec<String>,
}

/// The settings a config file's text stands for, in file order.
pub fn settings_from_toml(text: &str, origin: &Path) -> Result<Vec<Setting>> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| ProxyError::Config(format!("{}: {e}", origin.display())))?;
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in table {
        let values = match value {
            toml::Value::String(s) => vec![s],
            toml::Value::Integer(i) => vec![i.to_string()],
            toml::Value::Float(f) => vec![f.to_string()],
            toml::Value::Boolean(b) => vec![b.to_string()],
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(ProxyError::Config(format!(
                        "{}: {key}: list items must be strings, got {other:?}",
                        origin.display()
                    ))),
                })
                .collect::<Result<Vec<_>>>()?,
            other => {
                return Err(ProxyError::Config(format!(
                    "{}: {key}: unsupported value {other:?}",
                    origin.display()
                )))
            }
        };
        out.push(Setting { key, values });
    }
    Ok(out)
}

/// Parses the command line, with the config file's settings (if any) under flags and
/// environment variables. Exits with clap's message on a usage error, as `Cli::parse` does.
pub fn parse_cli(args: Vec<OsString>) -> Result<Cli> {
    let Some(path) = config_path(&args) else {
        return Ok(Cli::parse_from_args(args));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ProxyError::Config(format!("cannot read config file {}: {e}", path.display()))
    })?;
    let settings = settings_from_toml(&text, &path)?;
    let command = Cli::command();
    let matches = command.clone().get_matches_from(args.clone());
    let (sub_name, sub_matches) = match matches.subcommand() {
        Some((name, m)) => (Some(name.to_owned()), Some(m)),
        None => (None, None),
    };
    let sub_command = sub_name
        .as_deref()
        .and_then(|name| command.find_subcommand(name));
    let mut merged = args;
    for setting in settings {
        let arg = sub_command
            .and_then(|c| {
                c.get_arguments()
                    .find(|a| a.get_long() == Some(&setting.key))
            })
            .map(|a| (a, sub_matches))
            .or_else(|| {
                command
                    .get_arguments()
                    .find(|a| a.get_long() == Some(&setting.key))
                    .map(|a| (a, Some(&matches)))
            });
        let Some((arg, m)) = arg else {
            return Err(ProxyError::Config(format!(
                "{}: unknown option {:?} for `pgml-proxy {}`",
                path.display(),
                setting.key,
                sub_name.as_deref().unwrap_or("")
            )));
        };
        let source = m.and_then(|m| m.value_source(arg.get_id().as_str()));
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if arg.get_action().takes_values() {
            for value in setting.values {
                merged.push(format!("--{}={value}", setting.key).into());
            }
        } else if setting.values.iter().any(|v| v == "true") {
            merged.push(format!("--{}", setting.key).into());
        }
    }
    Ok(Cli::parse_from_args(merged))
}

impl Cli {
    fn parse_from_args(args: Vec<OsString>) -> Cli {
        let matches = Cli::command().get_matches_from(args);
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_values_become_settings() {
        let settings = settings_from_toml(
            "listen = \"0.0.0.0:7000\"\nmax-connections = 5\noffline = true\npreload = [\"a\", \"b\"]\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let flat: Vec<_> = settings
            .iter()
            .map(|s| (s.key.as_str(), s.values.join(",")))
            .collect();
        assert_eq!(
            flat,
            vec![
                ("listen", "0.0.0.0:7000".to_owned()),
                ("max-connections", "5".to_owned()),
                ("offline", "true".to_owned()),
                ("preload", "a,b".to_owned()),
            ]
        );
        assert!(settings_from_toml("listen = [1]", Path::new("x.toml")).is_err());
        assert!(settings_from_toml("listen = ", Path::new("x.toml")).is_err());
    }

    #[test]
    fn config_flag_is_found_in_both_spellings() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
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
