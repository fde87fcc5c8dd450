//! The gateway's TOML configuration: its types, how it is read, and the
//! checks that run before anything starts.
//!
//! Every error names the file, line and column and says what was expected.
//! Paths in the file (plugins, certificates, data directory) are relative to
//! the directory holding the config file.

mod error;
mod types;

use std::path::{Path, PathBuf};

pub use error::ConfigError;
pub use types::{
    CommandsConfig, Config, DeployConfig, DriverConfig, Encryption, GatewayConfig, LimitsOverride,
    MessageFormat, MqttConfig, MqttProtocol, PayloadFormatConfig, PluginLimits, ProcessorConfig,
    QueueConfig, RetentionConfig, RuntimeConfig, StorageConfig, TelemetryConfig, WhenFull,
    WritableChannel, credential_path,
};

/// The smallest `mqtt.max_packet_size` accepted: room for the topic, the
/// message envelope and at least one ordinary reading.
pub const MIN_PACKET_SIZE: u32 = 1024;

/// The largest `deploy.chunk_bytes`: a chunk and its topic fit the 1 MiB
/// packet the gateway accepts.
pub const MAX_CHUNK_BYTES: u32 = 1000 << 10;

/// The longest `[commands] window_s`: a day. The gateway remembers the id
/// of every signed command for this long, to refuse it a second time.
pub const MAX_COMMAND_WINDOW_S: u64 = 86_400;

/// The most `[commands] clock_skew_s` may allow.
pub const MAX_CLOCK_SKEW_S: u64 = 3_600;

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_col(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        config.source = path.to_path_buf();
        config.base_dir = base;
        config.sha256 = crate::plugin::trust::sha256_hex(text.as_bytes());
        config.loaded_ms = crate::reading::now_ms();
        config.validate(text)?;
        config.apply_retention();
        config.text = text.to_string();
        Ok(config)
    }

    /// `[retention]` is the one place for every data class's retention;
    /// the older keys (`[queue] max_age_s`, `[telemetry] raw_retention_s`
    /// and `trend_retention_s`) still apply where it says nothing.
    fn apply_retention(&mut self) {
        let r = self.retention;
        self.queue.max_age_s = r.queue_max_age_s.or(self.queue.max_age_s);
        if let Some(raw) = r.telemetry_raw_s {
            self.telemetry.raw_retention_s = raw;
        }
        if let Some(trend) = r.telemetry_trend_s {
            self.telemetry.trend_retention_s = trend;
        }
    }

    fn check_plugin_name(
        &self,
        text: &str,
        name: &Option<toml::Spanned<String>>,
    ) -> Result<(), ConfigError> {
        match name {
            Some(n) => crate::plugin::trust::check_name(n.get_ref())
                .map_err(|message| self.invalid(text, n.span(), format!("plugin_name: {message}"))),
            None => Ok(()),
        }
    }

    /// The `[trust]` policy, with the key files read.
    pub fn trust_policy(&self) -> Result<crate::plugin::trust::TrustPolicy, String> {
        let files: Vec<PathBuf> = (self.trust.publisher_keys.iter())
            .map(|k| self.resolve(Path::new(k.get_ref())))
            .collect();
        crate::plugin::trust::TrustPolicy::from_files(&files, self.trust.require_signed)
    }

    /// Every broker to try, in order: `mqtt.host` on `mqtt.port`, then
    /// each of `mqtt.hosts`.
    pub fn brokers(&self) -> Vec<(String, u16)> {
        std::iter::once((self.mqtt.host.clone(), self.mqtt.port))
            .chain(
                (self.mqtt.hosts.iter())
                    .filter_map(|b| broker_address(b.get_ref(), self.mqtt.port).ok()),
            )
            .collect()
    }

    /// The operator keys (`[trust] operator_keys`) with their ids, for
    /// [`crate::deploy::verify`].
    pub fn operator_keys(&self) -> Result<Vec<(String, ed25519_compact::PublicKey)>, String> {
        let files: Vec<PathBuf> = (self.trust.operator_keys.iter())
            .map(|k| self.resolve(Path::new(k.get_ref())))
            .collect();
        crate::plugin::trust::public_keys(&files)
    }

    /// Whether commands must be signed by an operator key: as `[commands]
    /// require_signed` says, else whenever operator keys are configured.
    pub fn commands_require_signed(&self) -> bool {
        match &self.commands.require_signed {
            Some(on) => *on.get_ref(),
            None => !self.trust.operator_keys.is_empty(),
        }
    }

    /// Resolves a path from the config file against the file's directory.
    pub fn resolve(&self, relative: &Path) -> PathBuf {
        if relative.is_absolute() {
            relative.to_path_buf()
        } else {
            self.base_dir.join(relative)
        }
    }

    fn invalid(&self, text: &str, span: std::ops::Range<usize>, message: String) -> ConfigError {
        let (line, column) = line_col(text, span.start);
        ConfigError::Invalid {
            path: self.source.clone(),
            line,
            column,
            message,
        }
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let gateway_span = self.gateway.id.span();
        if self.gateway.id.get_ref().is_empty()
            || !self.gateway.id.get_ref().chars().all(topic_safe)
        {
            return Err(self.invalid(
                text,
                gateway_span,
                format!(
                    "gateway.id {:?}: expected a non-empty name of letters, digits, '-', '_' or '.'",
                    self.gateway.id.get_ref()
                ),
            ));
        }
        for group in &self.gateway.groups {
            self.check_name(text, group, "group")?;
        }
        // A gateway managed by deployments may start with none of its own.
        if self.drivers.is_empty() && self.trust.operator_keys.is_empty() {
            return Err(ConfigError::Invalid {
                path: self.source.clone(),
                line: 1,
                column: 1,
                message: "no [[driver]] configured; expected at least one (or [trust] operator_keys, for a gateway that takes its drivers from deployments)".to_string(),
            });
        }
        let chunk = self.deploy.chunk_bytes;
        if !(1024..=MAX_CHUNK_BYTES).contains(&chunk) {
            return Err(ConfigError::Invalid {
                path: self.source.clone(),
                line: 1,
                column: 1,
                message: format!(
                    "deploy.chunk_bytes = {chunk}: expected 1024 to {MAX_CHUNK_BYTES}"
                ),
            });
        }
        self.check_command_authority(text)?;
        let keep_alive = &self.mqtt.keep_alive_s;
        if !(1..=u64::from(u16::MAX)).contains(keep_alive.get_ref()) {
            return Err(self.invalid(
                text,
                keep_alive.span(),
                format!(
                    "keep_alive_s = {}: expected 1 to 65535 seconds",
                    keep_alive.get_ref()
                ),
            ));
        }
        for broker in &self.mqtt.hosts {
            broker_address(broker.get_ref(), self.mqtt.port).map_err(|message| {
                self.invalid(text, broker.span(), format!("mqtt.hosts: {message}"))
            })?;
        }
        self.check_sparkplug(text)?;
        let max_packet = &self.mqtt.max_packet_size;
        if *max_packet.get_ref() < MIN_PACKET_SIZE {
            return Err(self.invalid(
                text,
                max_packet.span(),
                format!(
                    "max_packet_size = {}: expected at least {MIN_PACKET_SIZE} bytes",
                    max_packet.get_ref()
                ),
            ));
        }
        for file in [
            Some(&self.mqtt.ca_file),
            self.mqtt.client_cert_file.as_ref(),
            self.mqtt.client_key_file.as_ref(),
            self.mqtt.password_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let resolved = self.resolve(Path::new(file.get_ref()));
            if !resolved.is_file() {
                return Err(self.invalid(
                    text,
                    file.span(),
                    format!(
                        "file {:?} not found (looked at {})",
                        file.get_ref(),
                        resolved.display()
                    ),
                ));
            }
        }
        for (list, keys) in [
            ("publisher_keys", &self.trust.publisher_keys),
            ("operator_keys", &self.trust.operator_keys),
        ] {
            for key in keys {
                let resolved = self.resolve(Path::new(key.get_ref()));
                crate::plugin::trust::key_id(&resolved).map_err(|message| {
                    self.invalid(text, key.span(), format!("trust.{list}: {message}"))
                })?;
            }
        }
        if let (Some(file), Some(credential)) =
            (&self.mqtt.client_key_file, &self.mqtt.client_key_credential)
        {
            return Err(self.invalid(
                text,
                credential.span().start.min(file.span().start)..credential.span().end,
                "mqtt: client_key_file and client_key_credential both name the key; keep one"
                    .to_string(),
            ));
        }
        for credential in [
            &self.mqtt.client_key_credential,
            &self.storage.key_credential,
        ]
        .into_iter()
        .flatten()
        {
            self.check_name(text, credential, "credential")?;
            if credential.get_ref().chars().all(|c| c == '.') {
                return Err(self.invalid(
                    text,
                    credential.span(),
                    format!(
                        "credential name {:?}: not a file name",
                        credential.get_ref()
                    ),
                ));
            }
        }
        if let Some(credential) = &self.mqtt.client_key_credential {
            // Outside the service (`ferrule check` by an operator) there is
            // no credentials directory to look in; inside it, a missing
            // key is named here rather than at the first connect.
            if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
                let path = credential_path(credential.get_ref());
                if !path.is_file() {
                    return Err(self.invalid(
                        text,
                        credential.span(),
                        format!(
                            "client_key_credential {:?}: no such credential (looked at {})",
                            credential.get_ref(),
                            path.display()
                        ),
                    ));
                }
            }
        }
        let has_key =
            self.mqtt.client_key_file.is_some() || self.mqtt.client_key_credential.is_some();
        if self.mqtt.client_cert_file.is_some() != has_key {
            return Err(ConfigError::Invalid {
                path: self.source.clone(),
                line: 1,
                column: 1,
                message: "mqtt: client_cert_file and its key (client_key_file or client_key_credential) must be set together"
                    .to_string(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for driver in &self.drivers {
            self.check_name(text, &driver.name, "driver")?;
            if !names.insert(driver.name.get_ref().clone()) {
                return Err(self.invalid(
                    text,
                    driver.name.span(),
                    format!("duplicate driver name {:?}", driver.name.get_ref()),
                ));
            }
            if *driver.interval_ms.get_ref() == 0 {
                return Err(self.invalid(
                    text,
                    driver.interval_ms.span(),
                    "interval_ms: expected a positive number of milliseconds".to_string(),
                ));
            }
            self.check_plugin_file(text, &driver.plugin)?;
            self.check_plugin_name(text, &driver.plugin_name)?;
            self.check_addresses(text, &driver.allow_net)?;
            if let Some(device) = &driver.device {
                self.check_addresses(text, std::slice::from_ref(device))?;
                if driver.config.get("device").is_some() {
                    return Err(self.invalid(
                        text,
                        device.span(),
                        "device: the driver's config also sets `device`; keep it here only (the runtime passes it on)".to_string(),
                    ));
                }
            }
            self.check_commands(text, driver)?;
            let mut processor_names = std::collections::HashSet::new();
            for processor in &driver.processors {
                self.check_name(text, &processor.name, "processor")?;
                if !processor_names.insert(processor.name.get_ref().clone()) {
                    return Err(self.invalid(
                        text,
                        processor.name.span(),
                        format!(
                            "duplicate processor name {:?} in driver {:?}",
                            processor.name.get_ref(),
                            driver.name.get_ref()
                        ),
                    ));
                }
                self.check_plugin_file(text, &processor.plugin)?;
                self.check_plugin_name(text, &processor.plugin_name)?;
                self.check_addresses(text, &processor.allow_net)?;
            }
        }
        Ok(())
    }

    /// `format = "sparkplug-b"` needs `[mqtt.sparkplug]` with ids that
    /// fit a Sparkplug topic, and a clean session (Sparkplug 3.0 asks for
    /// one: a host must not see messages queued for an earlier session).
    fn check_sparkplug(&self, text: &str) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        let Some(format) = m
            .format
            .as_ref()
            .filter(|f| *f.get_ref() == MessageFormat::SparkplugB)
        else {
            return Ok(());
        };
        let Some(sparkplug) = &m.sparkplug else {
            return Err(self.invalid(
                text,
                format.span(),
                "format = \"sparkplug-b\" needs an [mqtt.sparkplug] table with group_id (and optionally edge_node_id, primary_host_id)".to_string(),
            ));
        };
        if !m.clean_session {
            return Err(self.invalid(
                text,
                format.span(),
                "format = \"sparkplug-b\" needs clean_session = true (Sparkplug 3.0 edge nodes start each connection clean)".to_string(),
            ));
        }
        for (what, id) in [
            ("group_id", Some(&sparkplug.group_id)),
            ("edge_node_id", sparkplug.edge_node_id.as_ref()),
            ("primary_host_id", sparkplug.primary_host_id.as_ref()),
        ] {
            if let Some(id) = id {
                self.check_name(text, id, &format!("mqtt.sparkplug.{what}:"))?;
            }
        }
        Ok(())
    }

    fn check_name(
        &self,
        text: &str,
        name: &toml::Spanned<String>,
        what: &str,
    ) -> Result<(), ConfigError> {
        if name.get_ref().is_empty() || !name.get_ref().chars().all(topic_safe) {
            return Err(self.invalid(
                text,
                name.span(),
                format!(
                    "{what} name {:?}: expected a non-empty name of letters, digits, '-', '_' or '.'",
                    name.get_ref()
                ),
            ));
        }
        Ok(())
    }

    /// `[commands]`: signatures only with keys to check them, and a time
    /// window a command can be sent in.
    fn check_command_authority(&self, text: &str) -> Result<(), ConfigError> {
        let c = &self.commands;
        if let Some(on) = &c.require_signed
            && *on.get_ref()
            && self.trust.operator_keys.is_empty()
        {
            return Err(self.invalid(
                text,
                on.span(),
                "commands.require_signed = true needs [trust] operator_keys: the keys whose signatures commands must carry".to_string(),
            ));
        }
        let window = &c.window_s;
        if !(1..=MAX_COMMAND_WINDOW_S).contains(window.get_ref()) {
            return Err(self.invalid(
                text,
                window.span(),
                format!(
                    "commands.window_s = {}: expected 1 to {MAX_COMMAND_WINDOW_S} seconds",
                    window.get_ref()
                ),
            ));
        }
        let skew = &c.clock_skew_s;
        if *skew.get_ref() > MAX_CLOCK_SKEW_S {
            return Err(self.invalid(
                text,
                skew.span(),
                format!(
                    "commands.clock_skew_s = {}: expected 0 to {MAX_CLOCK_SKEW_S} seconds",
                    skew.get_ref()
                ),
            ));
        }
        Ok(())
    }

    /// `[driver.commands.CHANNEL]` tables: limits that can be met.
    fn check_commands(&self, text: &str, driver: &DriverConfig) -> Result<(), ConfigError> {
        for (channel, rule) in &driver.commands {
            let bad = |why: String| {
                self.invalid(
                    text,
                    channel.span(),
                    format!(
                        "driver {:?}: commands.{}: {why}",
                        driver.name.get_ref(),
                        channel.get_ref()
                    ),
                )
            };
            if channel.get_ref().is_empty() || channel.get_ref().chars().any(char::is_control) {
                return Err(bad("expected a channel name".to_string()));
            }
            for (what, limit) in [("min", rule.min), ("max", rule.max)] {
                if limit.is_some_and(|v| !v.is_finite()) {
                    return Err(bad(format!("{what} must be a finite number")));
                }
            }
            if let (Some(min), Some(max)) = (rule.min, rule.max)
                && min > max
            {
                return Err(bad(format!("min {min} is above max {max}")));
            }
            if let Some(allowed) = &rule.allowed {
                if allowed.is_empty() {
                    return Err(bad(
                        "allowed is empty: leave the channel out to make it read-only".to_string(),
                    ));
                }
                if let Some(other) = allowed.iter().find(|v| {
                    !matches!(
                        v,
                        toml::Value::Integer(_)
                            | toml::Value::Float(_)
                            | toml::Value::Boolean(_)
                            | toml::Value::String(_)
                    )
                }) {
                    return Err(bad(format!(
                        "allowed value {other}: expected numbers, booleans or strings"
                    )));
                }
            }
            if rule.max_per_minute == Some(0) {
                return Err(bad(
                    "max_per_minute = 0: leave the channel out to make it read-only".to_string(),
                ));
            }
        }
        Ok(())
    }

    fn check_addresses(
        &self,
        text: &str,
        addresses: &[toml::Spanned<String>],
    ) -> Result<(), ConfigError> {
        for address in addresses {
            let ok = address
                .get_ref()
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(self.invalid(
                    text,
                    address.span(),
                    format!(
                        "allow_net entry {:?}: expected \"host:port\" (e.g. \"192.168.1.20:502\")",
                        address.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_plugin_file(
        &self,
        text: &str,
        plugin: &toml::Spanned<PathBuf>,
    ) -> Result<(), ConfigError> {
        let resolved = self.resolve(plugin.get_ref());
        if !resolved.is_file() {
            return Err(self.invalid(
                text,
                plugin.span(),
                format!(
                    "plugin file {:?} not found (looked at {})",
                    plugin.get_ref().display(),
                    resolved.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Names end up in MQTT topics, so they may not contain `/`, `+`, `#` or spaces.
fn topic_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;

/// `host`, `host:port`, `[v6]` or `[v6]:port` as host and port (`port`
/// when none is given).
pub fn broker_address(text: &str, port: u16) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("{text:?}: {why} (expected host, host:port or [IPv6]:port)");
    let (host, given) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("no closing ']'"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("expected ':' after ']'"))?,
                ),
            ),
        }
    } else {
        match text.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err(bad("an IPv6 address needs brackets"));
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad("no host name"));
    }
    let port = match given {
        None => port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("port must be 1 to 65535")),
        },
    };
    Ok((host.to_string(), port))
}
