//! The rules settings are parsed by: each takes one variable's text and gives
//! a typed value, or the one line naming the variable that start-up prints.

use std::time::Duration;

use super::{ConfigError, LogFormat, QueueType, Secret, redact_url};

/// One variable's text, as given or defaulted, and what it takes to report it.
#[derive(Clone, Copy)]
pub(super) struct Value<'a> {
    name: &'static str,
    text: &'a str,
    secret: Secret,
}

impl<'a> Value<'a> {
    pub(super) fn new(name: &'static str, text: &'a str, secret: Secret) -> Self {
        Value { name, text, secret }
    }

    pub(super) fn text(&self) -> &'a str {
        self.text
    }

    /// The error naming this variable and its value (secrets hidden).
    pub(super) fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        let value = match self.secret {
            Secret::Tokens => "***".to_owned(),
            Secret::Url => redact_url(self.text),
            Secret::No => self.text.to_owned(),
        };
        ConfigError::Invalid {
            name: self.name,
            value,
            reason: reason.into(),
        }
    }

    /// Unset (empty) is `None`; anything else goes through `rule`.
    pub(super) fn optional<T>(
        &self,
        rule: impl FnOnce(&Self) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        match self.text.trim() {
            "" => Ok(None),
            _ => rule(self).map(Some),
        }
    }

    /// A path; unset is `None`.
    pub(super) fn path(&self) -> Option<std::path::PathBuf> {
        match self.text.trim() {
            "" => None,
            path => Some(path.into()),
        }
    }

    /// A checkpoint origin: no spaces, no '+'; unset is `None`.
    pub(super) fn origin(&self) -> Result<Option<String>, ConfigError> {
        match self.text.trim() {
            "" => Ok(None),
            o if o.chars().any(|c| c.is_whitespace() || c == '+') => {
                Err(self.invalid("an origin has no spaces and no '+'"))
            }
            o => Ok(Some(o.to_owned())),
        }
    }

    pub(super) fn parse<T: std::str::FromStr>(&self, what: &str) -> Result<T, ConfigError> {
        self.text
            .trim()
            .parse()
            .map_err(|_| self.invalid(format!("expected {what}")))
    }

    pub(super) fn positive(&self, max: usize) -> Result<usize, ConfigError> {
        let what = format!("a whole number from 1 to {max}");
        let n: usize = self.parse(&what)?;
        if n == 0 || n > max {
            return Err(self.invalid(format!("expected {what}")));
        }
        Ok(n)
    }

    pub(super) fn queue_type(&self) -> Result<QueueType, ConfigError> {
        match self.text.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            _ => Err(self.invalid("expected classic or quorum")),
        }
    }

    pub(super) fn boolean(&self) -> Result<bool, ConfigError> {
        match self.text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(self.invalid("expected true or false")),
        }
    }

    pub(super) fn duration(&self) -> Result<Duration, ConfigError> {
        let d = humantime::parse_duration(self.text.trim())
            .map_err(|e| self.invalid(format!("expected a duration such as 50ms or 2s ({e})")))?;
        if d.is_zero() {
            return Err(self.invalid("expected a duration above zero"));
        }
        Ok(d)
    }

    /// A partition window: a duration of at most 100 years.
    pub(super) fn window(&self) -> Result<Duration, ConfigError> {
        let d = self.duration()?;
        if d > Duration::from_secs(100 * 366 * 86_400) {
            return Err(self.invalid("expected at most 100 years"));
        }
        Ok(d)
    }

    pub(super) fn url(&self, schemes: &[&str]) -> Result<String, ConfigError> {
        let v = self.text.trim();
        if !schemes.iter().any(|s| v.starts_with(s)) || v.len() <= 8 {
            return Err(self.invalid(format!(
                "expected a URL starting with {}",
                schemes.join(" or ")
            )));
        }
        Ok(v.to_owned())
    }

    pub(super) fn database_url(&self) -> Result<String, ConfigError> {
        if let Some(path) = super::sqlite_path(self.text.trim()) {
            if path.as_os_str().is_empty() {
                return Err(self.invalid("expected sqlite:PATH, the embedded store's file"));
            }
            return Ok(self.text.trim().to_owned());
        }
        self.url(&["postgres://", "postgresql://"]).map_err(|_| {
            self.invalid("expected postgres://… (PostgreSQL) or sqlite:PATH (an embedded file)")
        })?;
        self.pg_url()
    }

    /// A PostgreSQL URL (READ_DATABASE_URL: a read-only role, a replica).
    pub(super) fn pg_url(&self) -> Result<String, ConfigError> {
        let v = self.url(&["postgres://", "postgresql://"])?;
        // The TLS parameters are ours (libpq's meanings); the rest is tokio-postgres's.
        crate::db::pg_config(&v).map_err(|e| {
            let reason = match &e {
                crate::db::DbError::Url(e) => format!("not a PostgreSQL URL ({e})"),
                other => crate::telemetry::error_chain(other),
            };
            self.invalid(reason)
        })?;
        Ok(v)
    }

    pub(super) fn name(&self, allow_empty: bool) -> Result<String, ConfigError> {
        let v = self.text;
        if (!allow_empty && v.is_empty()) || v.len() > 255 {
            return Err(self.invalid("expected a name of 1 to 255 bytes"));
        }
        Ok(v.to_owned())
    }

    pub(super) fn bindings(&self) -> Result<Vec<String>, ConfigError> {
        let keys: Vec<String> = self
            .text
            .split(',')
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() || keys.iter().any(|k| k.len() > 255) {
            return Err(self.invalid("expected one or more comma-separated binding keys"));
        }
        Ok(keys)
    }

    fn list(&self) -> Vec<String> {
        self.text
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Comma-separated secrets, each at least `min` characters and without spaces.
    fn secrets(&self, min: usize, what: &str) -> Result<Vec<String>, ConfigError> {
        let secrets = self.list();
        if secrets
            .iter()
            .any(|t| t.len() < min || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(self.invalid(format!(
                "expected comma-separated {what} of at least {min} characters, without spaces"
            )));
        }
        Ok(secrets)
    }

    pub(super) fn tokens(&self) -> Result<Vec<String>, ConfigError> {
        self.secrets(16, "tokens")
    }

    pub(super) fn keys(&self) -> Result<Vec<String>, ConfigError> {
        self.secrets(32, "keys")
    }

    /// Comma-separated http(s) URLs, without a trailing slash.
    pub(super) fn urls(&self) -> Result<Vec<String>, ConfigError> {
        let urls: Vec<String> = self
            .list()
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        for u in &urls {
            let scheme_ok = u.starts_with("http://") || u.starts_with("https://");
            if !scheme_ok || u.chars().any(char::is_whitespace) {
                return Err(
                    self.invalid("expected comma-separated URLs such as https://witness.example/w")
                );
            }
        }
        Ok(urls)
    }

    pub(super) fn origins(&self) -> Result<Vec<String>, ConfigError> {
        let origins = self.list();
        for o in &origins {
            let scheme_ok = o.starts_with("http://") || o.starts_with("https://");
            if o != "*" && (!scheme_ok || o.ends_with('/')) {
                return Err(
                    self.invalid("expected * or origins such as https://candybar.example:3000")
                );
            }
        }
        Ok(origins)
    }

    pub(super) fn log_level(&self) -> Result<String, ConfigError> {
        let v = self.text.trim().to_ascii_lowercase();
        v.parse::<tracing_subscriber::EnvFilter>().map_err(|e| {
            self.invalid(format!(
                "expected trace, debug, info, warn, error or a filter ({e})"
            ))
        })?;
        Ok(v)
    }

    pub(super) fn log_format(&self) -> Result<LogFormat, ConfigError> {
        match self.text.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "console" | "text" | "pretty" => Ok(LogFormat::Console),
            _ => Err(self.invalid("expected json or console")),
        }
    }
}
