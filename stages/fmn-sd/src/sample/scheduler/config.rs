//! `scheduler/scheduler_config.json`, kept as given, and read per sampler class the way
//! diffusers' `from_config` reads it.
//!
//! A diffusers folder names one scheduler class (`PNDMScheduler` for SD 1.x, `DDIMScheduler`
//! for SD 2.x, ...), but any sampler can be built from it: `from_config` passes each key the
//! target class knows to its `__init__`, and leaves every other parameter at *that class's*
//! default. So the same file gives DDIM `timestep_spacing = "leading"` but Euler
//! `"linspace"` when the key is absent. Keys listed in `_use_default_values` (written by
//! diffusers when it saves a config) count as absent. Keys the class does not know are
//! ignored, as in diffusers.
use crate::{Result, SdError};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The raw content of a diffusers scheduler config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedulerConfig {
    values: Map<String, Value>,
    source: Option<PathBuf>,
}

impl SchedulerConfig {
    /// Reads a `scheduler_config.json`. A missing file, invalid JSON or a top level that is
    /// not an object is an error naming the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| SdError::io(path, e))?;
        let mut cfg = Self::parse(&text, path)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses the JSON text of a scheduler config.
    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::parse(text, Path::new(NO_FILE))
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let text = python_json_constants(text);
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| SdError::config(path, format!("invalid scheduler config: {e}")))?;
        match value {
            Value::Object(values) => Ok(Self {
                values,
                source: None,
            }),
            other => Err(SdError::config(
                path,
                format!("a scheduler config must be a JSON object, got {other}"),
            )),
        }
    }

    /// A config from already-parsed keys (no file).
    pub fn from_map(values: Map<String, Value>) -> Self {
        Self {
            values,
            source: None,
        }
    }

    /// The file this config was read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// `_class_name`: the scheduler class that wrote the file (informative only).
    pub fn class_name(&self) -> Option<&str> {
        self.values.get("_class_name").and_then(Value::as_str)
    }

    /// Every key as given, including private ones (`_class_name`, `_use_default_values`).
    pub fn values(&self) -> &Map<String, Value> {
        &self.values
    }

    /// The value `from_config` would pass for `key`: `None` when absent, when listed in
    /// `_use_default_values`, or for private (`_`-prefixed) keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        if key.starts_with('_') || self.uses_default(key) {
            return None;
        }
        self.values.get(key)
    }

    fn uses_default(&self, key: &str) -> bool {
        match self.values.get("_use_default_values") {
            Some(Value::Array(keys)) => keys.iter().any(|k| k.as_str() == Some(key)),
            _ => false,
        }
    }

    /// Sets `key` (like a keyword argument to `from_config`, it wins over the file and over
    /// `_use_default_values`).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        if let Some(Value::Array(keys)) = self.values.get_mut("_use_default_values") {
            keys.retain(|k| k.as_str() != Some(key));
        }
        self.values.insert(key.to_string(), value.into());
        self
    }

    /// [`set`](Self::set), by value.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.set(key, value);
        self
    }

    /// A reader of this config as diffusers class `class` sees it.
    pub(crate) fn reader(&self, class: &'static str) -> ClassReader<'_> {
        ClassReader { cfg: self, class }
    }

    fn where_(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| PathBuf::from(NO_FILE))
    }
}

const NO_FILE: &str = "<scheduler config>";

/// Python's `json.dump` writes `-Infinity`, `Infinity` and `NaN` for non-finite floats (a
/// DPM-Solver config saved by diffusers has `"lambda_min_clipped": -Infinity`). They are not
/// JSON, so outside string literals they are replaced by the strings `"-inf"`, `"inf"` and
/// `"nan"`, which the number readers accept.
fn python_json_constants(text: &str) -> std::borrow::Cow<'_, str> {
    const TOKENS: [(&str, &str); 3] = [
        ("-Infinity", "\"-inf\""),
        ("Infinity", "\"inf\""),
        ("NaN", "\"nan\""),
    ];
    if !TOKENS.iter().any(|(t, _)| text.contains(t)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some((tok, rep)) = TOKENS.iter().find(|(t, _)| rest.starts_with(t)) {
            out.push_str(rep);
            rest = &rest[tok.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// Typed access to one class's parameters: the config value when given, else the class
/// default. A value of the wrong JSON type is [`SdError::Config`] naming the file and key.
pub(crate) struct ClassReader<'a> {
    cfg: &'a SchedulerConfig,
    class: &'static str,
}

impl ClassReader<'_> {
    /// `use_karras_sigmas`, after checking that at most one of the three sigma-spacing options
    /// (Karras, exponential, beta) is set, as diffusers does.
    pub(crate) fn karras_sigmas(&self) -> Result<bool> {
        let karras = self.bool("use_karras_sigmas", false)?;
        let exponential = self.bool("use_exponential_sigmas", false)?;
        let beta_sigmas = self.bool("use_beta_sigmas", false)?;
        if [karras, exponential, beta_sigmas]
            .iter()
            .filter(|b| **b)
            .count()
            > 1
        {
            return Err(self.invalid(
                "use_karras_sigmas",
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be set",
            ));
        }
        Ok(karras)
    }

    fn bad_type(&self, key: &str, want: &str, got: &Value) -> SdError {
        SdError::config(
            self.cfg.where_(),
            format!("{}: `{key}` must be {want}, got {got}", self.class),
        )
    }

    /// `SdError::Unsupported` naming the key, the value and the class.
    pub fn unsupported(&self, key: &str, value: impl std::fmt::Display, why: &str) -> SdError {
        let mut msg = format!(
            "scheduler config `{key}` = {value} ({} in {})",
            self.class,
            self.cfg.where_().display()
        );
        if !why.is_empty() {
            msg.push_str(": ");
            msg.push_str(why);
        }
        SdError::Unsupported(msg)
    }

    /// An invalid value (e.g. a negative count), naming the file and key.
    pub fn invalid(&self, key: &str, message: impl std::fmt::Display) -> SdError {
        SdError::config(
            self.cfg.where_(),
            format!("{}: `{key}`: {message}", self.class),
        )
    }

    /// A boolean; `null` reads as `false` (Python truthiness, as the classes test it).
    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.cfg.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.bad_type(key, "a boolean", other)),
        }
    }

    pub fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.opt_f64(key)? {
            Some(v) => Ok(v),
            None if self.cfg.get(key).is_some() => {
                Err(self.bad_type(key, "a number", &Value::Null))
            }
            None => Ok(default),
        }
    }

    /// A number that may be absent or `null`. Also accepts the strings `"inf"`, `"-inf"` and
    /// `"nan"` (what Python's `Infinity` / `-Infinity` / `NaN` are read as).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "inf" | "infinity" | "+inf" => Ok(Some(f64::INFINITY)),
                "-inf" | "-infinity" => Ok(Some(f64::NEG_INFINITY)),
                "nan" => Ok(Some(f64::NAN)),
                _ => Err(self.bad_type(key, "a number", &Value::String(s.clone()))),
            },
            Some(other) => Err(self.bad_type(key, "a number", other)),
        }
    }

    /// A non-negative integer (also accepts a float with no fractional part, e.g. `1000.0`).
    pub fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.cfg.get(key) {
            None => Ok(default),
            Some(v @ Value::Number(n)) => {
                if let Some(u) = n.as_u64() {
                    return Ok(u as usize);
                }
                match n.as_f64() {
                    Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 1e15 => Ok(f as usize),
                    _ => Err(self.bad_type(key, "a non-negative integer", v)),
                }
            }
            Some(other) => Err(self.bad_type(key, "a non-negative integer", other)),
        }
    }

    /// A signed integer.
    pub fn i64(&self, key: &str, default: i64) -> Result<i64> {
        match self.cfg.get(key) {
            None => Ok(default),
            Some(v @ Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    return Ok(i);
                }
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => Ok(f as i64),
                    _ => Err(self.bad_type(key, "an integer", v)),
                }
            }
            Some(other) => Err(self.bad_type(key, "an integer", other)),
        }
    }

    pub fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.cfg.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.bad_type(key, "a string", other)),
        }
    }

    /// A string that may be absent or `null`.
    pub fn opt_string(&self, key: &str) -> Result<Option<String>> {
        match self.cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.bad_type(key, "a string or null", other)),
        }
    }

    /// A list of numbers that may be absent or `null` (`trained_betas`).
    pub fn opt_f64_list(&self, key: &str) -> Result<Option<Vec<f64>>> {
        match self.cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::Array(items)) => items
                .iter()
                .map(|x| {
                    x.as_f64()
                        .ok_or_else(|| self.bad_type(key, "a list of numbers", v))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(self.bad_type(key, "a list of numbers or null", other)),
        }
    }

    /// Fails with `Unsupported` when boolean option `key` is set (an option we do not
    /// implement: never silently ignored).
    pub fn require_false(&self, key: &str) -> Result<()> {
        if self.bool(key, false)? {
            return Err(self.unsupported(key, "true", "not implemented"));
        }
        Ok(())
    }
}
