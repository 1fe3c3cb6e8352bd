//! Settings from three layers, each later one winning key by key: the settings type's own
//! defaults, a YAML config file, and the flags given on the command line. Every stage merges
//! its settings with [`merge`]; unknown keys are errors naming the key and the file.
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::{Mapping, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("command-line flags: {0}")]
    Flags(String),
    /// Settings that parse but do not make sense (the message names the key).
    #[error("settings{}: {message}", .file.as_ref().map(|f| format!(" from {}", f.display())).unwrap_or_default())]
    Invalid {
        file: Option<PathBuf>,
        message: String,
    },
}

/// Settings that can be checked before any work starts.
pub trait Validate {
    /// What is wrong, naming the setting's key.
    fn validate(&self) -> Result<(), String>;
}

/// [`merge`], then [`Validate::validate`]: the settings a stage runs with. A key of the file
/// that `T::default()` does not serialise is refused, so `T` may `#[serde(flatten)]` a group of
/// keys shared between stages, which `deny_unknown_fields` does not allow.
pub fn merge_valid<T: DeserializeOwned + Serialize + Default + Validate>(
    file: Option<&Path>,
    flags: &impl Serialize,
) -> Result<T, ConfigError> {
    let text = file.map(read).transpose()?;
    let layers: Vec<(&Path, &str)> = file.zip(text.as_deref()).into_iter().collect();
    merge_valid_layers(&layers, flags)
}

/// [`merge_valid`] over several configs, each later one winning key by key (a built-in preset,
/// then a file): `(name in errors, YAML text)`.
pub fn merge_valid_layers<T: DeserializeOwned + Serialize + Default + Validate>(
    layers: &[(&Path, &str)],
    flags: &impl Serialize,
) -> Result<T, ConfigError> {
    for (name, text) in layers {
        refuse_unknown_keys::<T>(name, text)?;
    }
    let settings: T = merge_from(layers, flags)?;
    settings
        .validate()
        .map_err(|message| ConfigError::Invalid {
            file: layers.last().map(|(p, _)| p.to_path_buf()),
            message,
        })?;
    Ok(settings)
}

/// Parses `path` into `T`. Give `T` `#[serde(deny_unknown_fields)]` so that a misspelt key is
/// reported (by name, with its line) instead of silently ignored.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = read(path)?;
    serde_yaml::from_str(&text).map_err(|e| parse_error(path, e))
}

/// `T` from its defaults (`#[serde(default)]` on `T`), overridden by the keys of the YAML
/// file `file` (if any), overridden by `flags`: any serialisable value whose map entries are
/// setting keys; entries that serialise to `null` (an `Option` flag not given) are skipped,
/// so a flag that was not given leaves the file's value in place. Keys are replaced whole
/// (a list from the flags replaces the file's list).
pub fn merge<T: DeserializeOwned>(
    file: Option<&Path>,
    flags: &impl Serialize,
) -> Result<T, ConfigError> {
    let text = file.map(read).transpose()?;
    let layers: Vec<(&Path, &str)> = file.zip(text.as_deref()).into_iter().collect();
    merge_from(&layers, flags)
}

/// [`merge`] of configs already read, in order: `(name in errors, text)`.
fn merge_from<T: DeserializeOwned>(
    layers: &[(&Path, &str)],
    flags: &impl Serialize,
) -> Result<T, ConfigError> {
    let mut merged = Mapping::new();
    for &(path, text) in layers {
        let value: Value = serde_yaml::from_str(text).map_err(|e| parse_error(path, e))?;
        // Checked alone first, so that a bad key or value is reported against the file.
        serde_yaml::from_value::<T>(value.clone()).map_err(|e| parse_error(path, e))?;
        match value {
            Value::Mapping(m) => merged.extend(m),
            Value::Null => {}
            _ => {
                return Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: "expected a mapping of setting keys".into(),
                })
            }
        }
    }
    let flags = serde_yaml::to_value(flags).map_err(|e| ConfigError::Flags(e.to_string()))?;
    match flags {
        Value::Mapping(m) => {
            for (k, v) in m {
                if !v.is_null() {
                    merged.insert(k, v);
                }
            }
        }
        Value::Null => {}
        _ => return Err(ConfigError::Flags("flags must serialise to a map".into())),
    }
    serde_yaml::from_value(Value::Mapping(merged)).map_err(|e| ConfigError::Flags(e.to_string()))
}

/// For `#[serde(serialize_with = "fmn_core::config::display")]` on a flag whose type parses
/// from text: the flag as the text a config file would hold.
pub fn display<T: std::fmt::Display, S: serde::Serializer>(
    value: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    value.as_ref().map(ToString::to_string).serialize(s)
}

fn refuse_unknown_keys<T: Serialize + Default>(path: &Path, text: &str) -> Result<(), ConfigError> {
    let Ok(Value::Mapping(known)) = serde_yaml::to_value(T::default()) else {
        return Ok(());
    };
    let Ok(Value::Mapping(given)) = serde_yaml::from_str::<Value>(text) else {
        // Not a mapping: `merge` reports it.
        return Ok(());
    };
    let unknown: Vec<String> = given
        .keys()
        .filter(|k| !known.contains_key(*k))
        .map(|k| {
            serde_yaml::to_string(k)
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let mut expected: Vec<&str> = known.keys().filter_map(Value::as_str).collect();
    expected.sort_unstable();
    Err(ConfigError::Parse {
        path: path.to_path_buf(),
        message: format!(
            "unknown key{} `{}`; the keys are: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join("`, `"),
            expected.join(", ")
        ),
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_error(path: &Path, e: serde_yaml::Error) -> ConfigError {
    ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
