use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`: who this gateway is and where its data lives.
    pub gateway: GatewayConfig,
    /// `[mqtt]`: the broker and how to reach it.
    pub mqtt: MqttConfig,
    /// `[queue]`: the store-and-forward queue's caps and policies.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Sandbox limits every plugin gets unless it overrides them.
    #[serde(default)]
    pub limits: PluginLimits,
    /// `[runtime]`: rebuild backoff and engine sizing.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// `[telemetry]`: the gateway's reports on itself.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `[trust]`: whose plugins this gateway runs.
    #[serde(default)]
    pub trust: TrustConfig,
    /// `[deploy]`: deployments over MQTT (docs/fleet.md).
    #[serde(default)]
    pub deploy: DeployConfig,
    /// `[commands]`: which commands from the cloud are taken at all.
    #[serde(default)]
    pub commands: CommandsConfig,
    /// `[storage]`: encryption at rest.
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[retention]`: how long what the gateway keeps about itself stays.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The `[[driver]]` tables, in order.
    #[serde(rename = "driver", default)]
    pub drivers: Vec<DriverConfig>,
    /// The file this config was read from.
    #[serde(skip)]
    pub source: PathBuf,
    /// Directory relative paths are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// SHA-256 of the config's text, hex.
    #[serde(skip)]
    pub sha256: String,
    /// When it was read, in milliseconds since the Unix epoch.
    #[serde(skip)]
    pub loaded_ms: u64,
    /// The text it was parsed from (a reload compares sections).
    #[serde(skip)]
    pub text: String,
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Unique name of this gateway; part of every topic and message.
    pub id: Spanned<String>,
    /// Where the queue and plugin data live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The fleet groups this gateway belongs to: it also takes the
    /// deployments published for each of them (docs/fleet.md).
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

/// `[mqtt]`: the broker link (always TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address; also the name its certificate must carry.
    pub host: String,
    /// Broker port (8883).
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Further brokers of the same cluster, as `host` or `host:port` (an
    /// IPv6 address in brackets; the port defaults to `port`). A connection
    /// that fails or is lost is tried again on the next broker of the list
    /// `host`, `hosts…`, with the usual backoff.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Defaults to the gateway id.
    pub client_id: Option<String>,
    /// First topic level: topics are `{topic_prefix}/{gateway}/...`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// PEM bundle of the CA(s) that sign the broker's certificate.
    pub ca_file: Spanned<String>,
    /// PEM certificate chain of this gateway, for mutual TLS.
    pub client_cert_file: Option<Spanned<String>>,
    /// PEM private key of this gateway (PKCS#8, PKCS#1 or SEC1).
    pub client_key_file: Option<Spanned<String>>,
    /// The private key comes from this systemd credential instead
    /// (`$CREDENTIALS_DIRECTORY/{name}`, from `LoadCredential=` or
    /// `LoadCredentialEncrypted=`), so no file the gateway's user can read
    /// outside the service holds it.
    #[serde(default)]
    pub client_key_credential: Option<Spanned<String>>,
    /// Optional MQTT user name; the broker may also map the client
    /// certificate to a user.
    pub username: Option<String>,
    /// File holding the MQTT password (first line; read at each connect, so
    /// it can be rotated). Never inline in the config.
    pub password_file: Option<Spanned<String>>,
    /// MQTT protocol version: "3.1.1" (default) or "5".
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// How data messages carry their readings: "readings" (default, one
    /// object per reading) or "compact" (channels listed once per message,
    /// readings as arrays). Applies to batches captured from then on.
    #[serde(default)]
    pub payload_format: PayloadFormatConfig,
    /// What data messages are: "json" (default; ferrule's JSON, shaped by
    /// `payload_format`) or "sparkplug-b" (Eclipse Sparkplug 3.0: the
    /// gateway is an edge node, each driver a device; `[mqtt.sparkplug]`).
    pub format: Option<Spanned<MessageFormat>>,
    /// `[mqtt.sparkplug]`: the edge node's identity and its primary host.
    pub sparkplug: Option<SparkplugConfig>,
    /// Start each connection with a clean session (default). With `false`
    /// the broker keeps the session (subscriptions, QoS 1 messages for this
    /// gateway) across disconnects; for MQTT 5 for `session_expiry_s`.
    #[serde(default = "default_true")]
    pub clean_session: bool,
    /// MQTT 5 only, with `clean_session = false`: how long the broker keeps
    /// the session after a disconnect.
    #[serde(default = "default_session_expiry_s")]
    pub session_expiry_s: u32,
    /// Largest MQTT packet this gateway sends, in bytes; a queue entry
    /// larger than this is published in parts. An MQTT 5 broker's own
    /// limit (from CONNACK) lowers it further; a 3.1.1 broker cannot say,
    /// so set it to the broker's limit.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: Spanned<u32>,
    /// Keep-alive period; a link that stays silent (no PINGRESP) for about
    /// two periods is treated as dead and reconnected.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: Spanned<u64>,
    /// Queue entries published but not yet acknowledged, at most.
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    /// First reconnect delay; doubles on each failure up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum MqttProtocol {
    /// MQTT 3.1.1 (`"3.1.1"`).
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5 (`"5"`).
    #[serde(rename = "5")]
    V5,
}

fn default_session_expiry_s() -> u32 {
    7 * 24 * 3600
}

fn default_max_packet_size() -> Spanned<u32> {
    Spanned::new(0..0, 128 * 1024)
}

fn default_mqtt_port() -> u16 {
    8883
}

fn default_topic_prefix() -> String {
    "ferrule".to_string()
}

fn default_keep_alive_s() -> Spanned<u64> {
    Spanned::new(0..0, 30)
}

fn default_inflight() -> u16 {
    32
}

fn default_reconnect_min_ms() -> u64 {
    500
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

/// `[queue]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// The redb file; defaults to `{data_dir}/queue.redb`.
    pub path: Option<PathBuf>,
    /// Cap on the stored entries' size, in bytes; no cap when absent.
    pub max_bytes: Option<u64>,
    /// What happens at the cap: `drop-oldest` (counted) or `block` (drivers wait).
    #[serde(default)]
    pub when_full: WhenFull,
    /// Entries older than this many seconds are dropped (counted); kept forever when absent.
    pub max_age_s: Option<u64>,
    /// Milliseconds an append that finds the queue idle waits for others
    /// to share its commit (and fsync); 0 commits at once.
    #[serde(default = "default_commit_linger_ms")]
    pub commit_linger_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            path: None,
            max_bytes: None,
            when_full: WhenFull::default(),
            max_age_s: None,
            commit_linger_ms: default_commit_linger_ms(),
        }
    }
}

/// `queue.commit_linger_ms` unless set: see BENCHMARKS.md (latency and e2e)
/// for what it was chosen from.
pub fn default_commit_linger_ms() -> u64 {
    1
}

/// `mqtt.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageFormat {
    /// ferrule's JSON messages.
    #[default]
    Json,
    /// Sparkplug B (protobuf, births and deaths, metric aliases).
    SparkplugB,
}

/// `[mqtt.sparkplug]`: how the gateway appears to Sparkplug hosts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    /// The Sparkplug group the edge node belongs to.
    pub group_id: Spanned<String>,
    /// The edge node's id; the gateway id when absent.
    pub edge_node_id: Option<Spanned<String>>,
    /// A Sparkplug 3.0 primary host application: births and data wait
    /// until its STATE says it is online (readings queue meanwhile).
    pub primary_host_id: Option<Spanned<String>>,
}

/// `mqtt.payload_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormatConfig {
    /// One object per reading.
    #[default]
    Readings,
    /// Channels once per message, readings as arrays.
    Compact,
}

/// `queue.when_full`: what happens when the queue reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Delete the oldest entries to make room (counted).
    #[default]
    DropOldest,
    /// Make drivers wait until the publisher frees space; nothing is dropped.
    Block,
}

/// Declares the plugin sandbox limits once: [`PluginLimits`] (each key
/// with its default), and [`LimitsOverride`], the same keys optional, which
/// a plugin's own `[plugins.limits]` table sets over the global `[limits]`.
macro_rules! plugin_limits {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty = $default:expr,)*) => {
        /// Sandbox limits for one plugin instance.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct PluginLimits {
            $($(#[doc = $doc])* pub $name: $ty,)*
        }

        impl Default for PluginLimits {
            fn default() -> Self {
                PluginLimits { $($name: $default,)* }
            }
        }

        /// Per-plugin overrides of the global `[limits]`; unset keys inherit.
        #[derive(Debug, Clone, Copy, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct LimitsOverride {
            $(#[doc = concat!("Overrides `", stringify!($name), "`.")] pub $name: Option<$ty>,)*
        }

        impl PluginLimits {
            /// These limits with `over`'s keys replacing theirs.
            pub fn with(self, over: Option<LimitsOverride>) -> PluginLimits {
                let Some(o) = over else {
                    return self;
                };
                PluginLimits { $($name: o.$name.unwrap_or(self.$name),)* }
            }
        }
    };
}

plugin_limits! {
    /// Linear memory, in MiB.
    memory_mb: u64 = 64,
    /// Longest a single call (init, poll, process, ...) may run.
    timeout_ms: u64 = 1_000,
    /// Most readings one `poll` or `process` may return.
    max_readings: usize = 10_000,
    /// Longest string or byte value (channel, unit, text, bytes), in bytes.
    max_value_bytes: usize = 64 * 1024,
    /// Most channels in a driver's channel table (declared by the driver
    /// and its processors, or learned from the names in older plugins'
    /// readings).
    max_channels: usize = 4_096,
    /// Log lines (host log, stdout, stderr together) per second; bursts of
    /// twice that pass, the rest are dropped and counted.
    log_lines_per_s: u32 = 20,
    /// Most bytes the host copies out of the plugin in one call: a result
    /// (every reading's record, its strings and bytes), a device status, or
    /// the arguments of one call the plugin makes to the host (a log line,
    /// a file write). Checked against the lengths in the plugin's memory
    /// before anything is copied.
    max_result_bytes: usize = 2 << 20,
    /// Most `extra` pairs in one device status.
    max_status_entries: usize = 64,
    /// Longest firmware string, `extra` key or `extra` value of a device status.
    max_status_value_bytes: usize = 1024,
    /// Longest log line kept; longer lines are cut.
    max_log_bytes: usize = 4096,
    /// Longest error message kept from a plugin; longer ones are cut.
    max_error_bytes: usize = 1024,
    /// Files, directories and sockets one instance may hold open at once.
    max_open_files: usize = 32,
    /// Bytes the plugin's `data_dir` may hold (files and directories).
    data_dir_quota_mb: u64 = 64,
}

/// The gateway's reports on itself (schema in docs/telemetry.md).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Publish a snapshot this often (0 turns telemetry off).
    #[serde(default = "default_telemetry_interval_s")]
    pub interval_s: u64,
    /// Cap of the telemetry queue (`{data_dir}/telemetry.redb`); the oldest
    /// snapshots go first (counted) when a long outage fills it.
    #[serde(default = "default_telemetry_queue_bytes")]
    pub max_queue_bytes: u64,
    /// How long every snapshot is kept locally.
    #[serde(default = "default_raw_retention_s")]
    pub raw_retention_s: u64,
    /// How long hourly roll-ups (min, average, max per figure) are kept.
    #[serde(default = "default_trend_retention_s")]
    pub trend_retention_s: u64,
    /// Largest encoded snapshot; bigger parts (a driver's device status)
    /// are trimmed, with markers, so the rest is still published. Lowered
    /// to fit `mqtt.max_packet_size`.
    #[serde(default = "default_max_snapshot_bytes")]
    pub max_snapshot_bytes: u64,
    /// Cap of what `{data_dir}/telemetry-history.redb` holds, besides the
    /// retentions; the oldest samples go first, counted.
    #[serde(default = "default_max_history_bytes")]
    pub max_history_bytes: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            interval_s: default_telemetry_interval_s(),
            max_queue_bytes: default_telemetry_queue_bytes(),
            raw_retention_s: default_raw_retention_s(),
            trend_retention_s: default_trend_retention_s(),
            max_snapshot_bytes: default_max_snapshot_bytes(),
            max_history_bytes: default_max_history_bytes(),
        }
    }
}

fn default_telemetry_interval_s() -> u64 {
    60
}

fn default_telemetry_queue_bytes() -> u64 {
    16 << 20
}

fn default_raw_retention_s() -> u64 {
    7 * 24 * 3600
}

fn default_trend_retention_s() -> u64 {
    2 * 365 * 24 * 3600
}

fn default_max_snapshot_bytes() -> u64 {
    64 << 10
}

fn default_max_history_bytes() -> u64 {
    32 << 20
}

/// `[trust]`: the publisher keys whose signed plugins run here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Ed25519 public key files (PEM), relative to the config file.
    #[serde(default)]
    pub publisher_keys: Vec<Spanned<String>>,
    /// Refuse plugins without a valid signature by one of the keys; on by
    /// default once a key is configured.
    pub require_signed: Option<bool>,
    /// Ed25519 public key files of the operators whose signed deployment
    /// documents this gateway accepts (docs/fleet.md), relative to the
    /// config file. A separate role from `publisher_keys`.
    #[serde(default)]
    pub operator_keys: Vec<Spanned<String>>,
}

/// Runtime-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// First delay before rebuilding a failed plugin instance; doubles up to `restart_max_ms`.
    #[serde(default = "default_restart_min_ms")]
    pub restart_min_ms: u64,
    /// Longest delay between rebuilds.
    #[serde(default = "default_restart_max_ms")]
    pub restart_max_ms: u64,
    /// Plugin instances the pooling allocator reserves room for.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Keep compiled plugins in `{data_dir}/cache` so restarts skip compilation.
    #[serde(default = "default_true")]
    pub compile_cache: bool,
    /// Where the compile cache lives instead of `{data_dir}/cache`
    /// (relative to the config file): a directory several gateways or a
    /// developer's repeated `ferrule demo` runs may share. Entries are keyed
    /// by the component's SHA-256 and the engine's settings.
    #[serde(default)]
    pub compile_cache_dir: Option<PathBuf>,
    /// The live status file `ferrule top` reads (relative to the config
    /// file); `{data_dir}/status.json` when absent. Under systemd, a file
    /// in the service's RuntimeDirectory (RAM) such as
    /// /run/ferrule/status.json.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    /// How often the live status file is rewritten; 0 writes none.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            restart_min_ms: default_restart_min_ms(),
            restart_max_ms: default_restart_max_ms(),
            max_instances: default_max_instances(),
            compile_cache: true,
            compile_cache_dir: None,
            status_file: None,
            status_interval_ms: default_status_interval_ms(),
        }
    }
}

fn default_status_interval_ms() -> u64 {
    1000
}

fn default_restart_min_ms() -> u64 {
    500
}

fn default_restart_max_ms() -> u64 {
    60_000
}

fn default_max_instances() -> u32 {
    64
}

fn default_true() -> bool {
    true
}

/// One driver instance and its processor chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverConfig {
    /// Unique name; appears in topics as `{prefix}/{gateway}/data/{name}`.
    pub name: Spanned<String>,
    /// Path of the driver component (`.wasm`).
    pub plugin: Spanned<PathBuf>,
    /// The name the plugin must be signed as (`ferrule plugin sign --name`).
    pub plugin_name: Option<Spanned<String>>,
    /// Run the plugin even if it is an older version than one this gateway
    /// already ran under the same name (logged).
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Time between polls (1000).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: Spanned<u64>,
    /// Passed to the plugin's `init` as JSON.
    #[serde(default = "empty_table")]
    pub config: toml::Value,
    /// Overrides of the global `[limits]`; processors inherit them.
    pub limits: Option<LimitsOverride>,
    /// `host:port` of the device this driver talks to: the driver may
    /// connect to it (no separate `allow_net` entry), and its `init` gets it
    /// as `device` in its config, resolved to an address.
    pub device: Option<Spanned<String>>,
    // The capability keys are repeated on both plugin tables rather than
    // flattened from one struct: serde's `flatten` defeats both
    // `deny_unknown_fields` and toml's spans. `capabilities()` gathers them.
    /// `host:port` addresses the plugin may open TCP connections to; nothing when empty.
    #[serde(default)]
    pub allow_net: Vec<Spanned<String>>,
    /// Whether the plugin may resolve host names.
    #[serde(default)]
    pub allow_dns: bool,
    /// A private directory `{data_dir}/plugins/{instance}`, seen by the plugin as `/data`.
    #[serde(default)]
    pub data_dir: bool,
    /// Run in order on every batch this driver produces.
    #[serde(rename = "processor", default)]
    pub processors: Vec<ProcessorConfig>,
    /// `[driver.commands.CHANNEL]`: the channels commands from the cloud
    /// may write, each with its limits. A channel not listed is never
    /// written: by default, none is.
    #[serde(default)]
    pub commands: std::collections::BTreeMap<Spanned<String>, WritableChannel>,
}

/// What commands may write to one channel (`[driver.commands.CHANNEL]`).
/// Every limit set must hold; an empty table allows any value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WritableChannel {
    /// Lowest value allowed (numbers only).
    pub min: Option<f64>,
    /// Highest value allowed (numbers only).
    pub max: Option<f64>,
    /// The only values allowed (numbers, booleans or strings).
    pub allowed: Option<Vec<toml::Value>>,
    /// Writes accepted per minute at most, counted over the last 60 s.
    pub max_per_minute: Option<u32>,
}

fn default_interval_ms() -> Spanned<u64> {
    Spanned::new(0..0, 1_000)
}

fn empty_table() -> toml::Value {
    toml::Value::Table(toml::Table::new())
}

/// One processor instance in a driver's chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Unique within its driver; the instance is `{driver}/{name}`.
    pub name: Spanned<String>,
    /// Path of the processor component (`.wasm`).
    pub plugin: Spanned<PathBuf>,
    /// The name the plugin must be signed as (`ferrule plugin sign --name`).
    pub plugin_name: Option<Spanned<String>>,
    /// Run the plugin even if it is an older version than one this gateway
    /// already ran under the same name (logged).
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Passed to the plugin's `init` as JSON.
    #[serde(default = "empty_table")]
    pub config: toml::Value,
    /// Overrides of the driver's limits for this processor.
    pub limits: Option<LimitsOverride>,
    /// `host:port` addresses the plugin may open TCP connections to; nothing when empty.
    #[serde(default)]
    pub allow_net: Vec<Spanned<String>>,
    /// Whether the plugin may resolve host names.
    #[serde(default)]
    pub allow_dns: bool,
    /// A private directory `{data_dir}/plugins/{instance}`, seen by the plugin as `/data`.
    #[serde(default)]
    pub data_dir: bool,
}

/// `[deploy]`: how a gateway takes deployments over MQTT (active once
/// `[trust] operator_keys` is set).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// The largest plugin file a deployment may make this gateway fetch.
    #[serde(default = "default_max_plugin_bytes")]
    pub max_plugin_bytes: u64,
    /// Bytes asked for per chunk of a plugin transfer (each chunk is one
    /// MQTT message; kept under the 1 MiB the gateway accepts per packet).
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u32,
    /// Seconds without an answer before a chunk is asked for again.
    #[serde(default = "default_chunk_timeout_s")]
    pub chunk_timeout_s: u64,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            max_plugin_bytes: default_max_plugin_bytes(),
            chunk_bytes: default_chunk_bytes(),
            chunk_timeout_s: default_chunk_timeout_s(),
        }
    }
}

fn default_max_plugin_bytes() -> u64 {
    64 << 20
}

fn default_chunk_bytes() -> u32 {
    256 << 10
}

fn default_chunk_timeout_s() -> u64 {
    10
}

/// `[commands]`: how commands from the cloud are authorized. The channels
/// they may write are listed per driver (`[driver.commands.CHANNEL]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// Refuse commands that are not signed by one of `[trust]
    /// operator_keys`; on by default once an operator key is configured.
    pub require_signed: Option<Spanned<bool>>,
    /// A signed command is taken only within this many seconds of its
    /// `issued_ms` (60).
    #[serde(default = "default_command_window_s")]
    pub window_s: Spanned<u64>,
    /// How far the operator's clock may be ahead of the gateway's, in
    /// seconds (10).
    #[serde(default = "default_clock_skew_s")]
    pub clock_skew_s: Spanned<u64>,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            require_signed: None,
            window_s: default_command_window_s(),
            clock_skew_s: default_clock_skew_s(),
        }
    }
}

fn default_command_window_s() -> Spanned<u64> {
    Spanned::new(0..0, 60)
}

fn default_clock_skew_s() -> Spanned<u64> {
    Spanned::new(0..0, 10)
}

/// `[storage]`: how the gateway keeps data on its disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Encryption of queued entries.
    #[serde(default)]
    pub encryption: Encryption,
    /// The storage key file (a keyring), relative to the config file.
    #[serde(default = "default_key_file")]
    pub key_file: Spanned<String>,
    /// The keyring comes from this systemd credential instead
    /// (`$CREDENTIALS_DIRECTORY/{name}`, from `LoadCredential=` or
    /// `LoadCredentialEncrypted=`); ferrule reads it and never changes it.
    #[serde(default)]
    pub key_credential: Option<Spanned<String>>,
}

impl MqttConfig {
    /// Where the gateway's private key is read from: the credential's file
    /// in `$CREDENTIALS_DIRECTORY`, or `client_key_file` through `resolve`.
    pub fn client_key(&self, resolve: impl Fn(&str) -> PathBuf) -> Option<PathBuf> {
        match &self.client_key_credential {
            Some(name) => Some(credential_path(name.get_ref())),
            None => self.client_key_file.as_ref().map(|f| resolve(f.get_ref())),
        }
    }
}

/// The file of the systemd credential `name`: in `$CREDENTIALS_DIRECTORY`
/// when the service manager set it, else a path that names the variable
/// (so an error message says where the file was looked for).
pub fn credential_path(name: &str) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(format!("$CREDENTIALS_DIRECTORY/{name}")),
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            encryption: Encryption::default(),
            key_file: default_key_file(),
            key_credential: None,
        }
    }
}

fn default_key_file() -> Spanned<String> {
    Spanned::new(0..0, "storage.key".to_string())
}

/// `[storage] encryption`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Encryption {
    /// AES-256-GCM with the key file's newest key.
    #[default]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// Entries are stored in plaintext.
    #[serde(rename = "none")]
    None,
}

/// `[retention]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Audit records older than this many days are removed (7 years).
    #[serde(default = "default_audit_days")]
    pub audit_days: u64,
    /// The audit log is kept under this many MiB (oldest records removed).
    #[serde(default = "default_audit_max_mb")]
    pub audit_max_mb: u64,
    /// Queued readings older than this many seconds are dropped (counted);
    /// `[queue] max_age_s` when absent (kept forever when neither is set).
    #[serde(default)]
    pub queue_max_age_s: Option<u64>,
    /// Raw telemetry snapshots kept this many seconds; `[telemetry]
    /// raw_retention_s` when absent.
    #[serde(default)]
    pub telemetry_raw_s: Option<u64>,
    /// Hourly telemetry roll-ups kept this many seconds; `[telemetry]
    /// trend_retention_s` when absent.
    #[serde(default)]
    pub telemetry_trend_s: Option<u64>,
    /// Files in plugins' private data folders not modified for this many
    /// days are removed (hourly, counted); kept when absent.
    #[serde(default)]
    pub plugin_data_days: Option<u64>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            audit_days: default_audit_days(),
            audit_max_mb: default_audit_max_mb(),
            queue_max_age_s: None,
            telemetry_raw_s: None,
            telemetry_trend_s: None,
            plugin_data_days: None,
        }
    }
}

fn default_audit_days() -> u64 {
    7 * 365
}

fn default_audit_max_mb() -> u64 {
    256
}
