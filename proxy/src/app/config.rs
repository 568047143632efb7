//! Settings files: every command-line option can also come from a TOML file whose keys are
//! the long option names (`listen = "0.0.0.0:6432"`, `max-connections = 200`,
//! `preload = ["m1"]`). Two files are read, the first that sets a key wins:
//! 1. `--config FILE` (or PGML_PROXY_CONFIG), when given;
//! 2. `pgml-proxy.toml` next to the executable, when present: `make setup` writes it there
//!    with the paths of what it installed (ONNX Runtime, Postgres, the hub cache, datasets),
//!    so the binary works from a shell that exported nothing.
//!
//! A file's settings are merged into the command line for the options that neither a flag nor
//! an environment variable set, so the precedence is flag > environment > --config file >
//! settings file > default. A key that is an option of another subcommand only is skipped (one
//! file serves every subcommand); a key no subcommand knows is an error. The process
//! environment is never modified.

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

/// The settings file `make setup` writes: `pgml-proxy.toml` next to the running executable.
pub fn settings_file() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join(SETTINGS_FILE_NAME))
}

/// The settings file's name (next to the executable).
pub const SETTINGS_FILE_NAME: &str = "pgml-proxy.toml";

/// The settings files that apply to `args`, most important first: the `--config` file (which
/// must be readable) and the settings file next to the executable (when it exists).
fn settings_files(args: &[OsString]) -> Result<Vec<(PathBuf, Vec<Setting>)>> {
    let mut files = Vec::new();
    if let Some(path) = config_path(args) {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ProxyError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let settings = settings_from_toml(&text, &path)?;
        files.push((path, settings));
    }
    if let Some(path) = settings_file() {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let settings = settings_from_toml(&text, &path)?;
                files.push((path, settings));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ProxyError::Config(format!(
                    "cannot read the settings file {}: {e}",
                    path.display()
                )))
            }
        }
    }
    Ok(files)
}

/// Whether some subcommand (or the top level) has an option `--key`.
fn known_anywhere(command: &clap::Command, key: &str) -> bool {
    command.get_arguments().any(|a| a.get_long() == Some(key))
        || command
            .get_subcommands()
            .any(|sub| sub.get_arguments().any(|a| a.get_long() == Some(key)))
}

/// Parses the command line, with the settings files' settings (if any) under flags and
/// environment variables. Exits with clap's message on a usage error, as `Cli::parse` does.
pub fn parse_cli(args: Vec<OsString>) -> Result<Cli> {
    let files = settings_files(&args)?;
    if files.is_empty() {
        return Ok(Cli::parse_from_args(args));
    }
    let merged = merge_settings(args, files)?;
    Ok(Cli::parse_from_args(merged))
}

/// `args` with the settings of `files` (most important first) appended as `--key=value` for
/// the options that no flag, environment variable or earlier file set.
fn merge_settings(
    args: Vec<OsString>,
    files: Vec<(PathBuf, Vec<Setting>)>,
) -> Result<Vec<OsString>> {
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
    let mut taken: Vec<String> = Vec::new();
    for (path, settings) in files {
        for setting in settings {
            if taken.contains(&setting.key) {
                continue;
            }
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
                if known_anywhere(&command, &setting.key) {
                    continue;
                }
                return Err(ProxyError::Config(format!(
                    "{}: unknown option {:?} (keys are the long option names of `pgml-proxy \
                     <command> --help`)",
                    path.display(),
                    setting.key,
                )));
            };
            taken.push(setting.key.clone());
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
    }
    Ok(merged)
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
    use crate::app::cli::Command;
    use clap::Parser;

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

    fn file(name: &str, toml: &str) -> (PathBuf, Vec<Setting>) {
        let path = PathBuf::from(name);
        let settings = settings_from_toml(toml, &path).unwrap();
        (path, settings)
    }

    fn merged(args: &[&str], files: Vec<(PathBuf, Vec<Setting>)>) -> Result<Cli> {
        let args = args.iter().map(OsString::from).collect();
        let merged = merge_settings(args, files)?;
        Ok(Cli::try_parse_from(merged).unwrap())
    }

    // Keys with no environment variable that `make test` exports, so the test sees the files.
    #[test]
    fn config_file_beats_settings_file_and_other_commands_keys_are_skipped() {
        let config = file("config.toml", "max-models = 2\n");
        let settings = file(
            "pgml-proxy.toml",
            "max-models = 9\ncache-mb = 7\nlisten = \"127.0.0.1:7000\"\n",
        );
        let cli = merged(&["p", "embed"], vec![config, settings.clone()]).unwrap();
        let Command::Embed(embed) = cli.command else {
            panic!("embed expected");
        };
        assert_eq!(embed.engine.max_models, 2);
        assert_eq!(embed.engine.cache_mb, 7);
        // listen is serve's: the same file still serves embed, and serve reads it.
        let cli = merged(&["p", "serve"], vec![settings]).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("serve expected");
        };
        assert_eq!(serve.listen, "127.0.0.1:7000");
        assert_eq!(serve.engine.max_models, 9);
    }

    #[test]
    fn flags_beat_settings_files_and_unknown_keys_are_errors() {
        let settings = file("pgml-proxy.toml", "hf-home = \"/from-file\"\n");
        let cli = merged(&["p", "embed", "--hf-home", "/from-flag"], vec![settings]).unwrap();
        let Command::Embed(embed) = cli.command else {
            panic!("embed expected");
        };
        assert_eq!(
            embed.engine.hub.dir(),
            Some(PathBuf::from("/from-flag/hub"))
        );
        let typo = file("pgml-proxy.toml", "ort-dylb = \"/x\"\n");
        let err = merged(&["p", "embed"], vec![typo]).unwrap_err();
        assert!(err.to_string().contains("\"ort-dylb\""), "{err}");
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
