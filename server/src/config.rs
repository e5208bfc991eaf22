//! Configuration: one serde tree, layered defaults → `ferrobase.toml` → `FERROBASE_*`
//! environment → command-line flags. Unknown keys in the file are errors; `validate`
//! reports every problem at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::documents::collection::{CollectionSpec, IndexSpec, RuleSpec};
use crate::util::secret::Secret;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub http: String,
    /// Folder for the SQLite database, generated keys and local files.
    pub data_dir: PathBuf,
    /// `postgres://…` to run on Postgres (or `sqlite:…` for a specific file).
    pub database_url: Option<Secret>,
    /// The service key; generated on first start when absent.
    pub service_key: Option<Secret>,
    pub functions_dir: PathBuf,
    pub dev: bool,
    /// Log filter (`info`, `debug`, `ferrobase=debug,sqlx=warn`, …).
    pub log: String,
    pub database: DatabaseConfig,
    pub changes: ChangesConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub realtime: RealtimeConfig,
    pub storage: StorageConfig,
    pub functions: FunctionsConfig,
    /// Buckets declared in the file, applied at start.
    pub buckets: BTreeMap<String, crate::storage::BucketSpec>,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` is believed for the client address.
    pub trusted_proxies: Vec<String>,
    /// Collections declared in the file, applied at start.
    pub collections: BTreeMap<String, CollectionDecl>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Reader connections (SQLite) or pool size (Postgres).
    pub max_connections: u32,
    /// Group concurrent writes into one commit.
    pub group_commit: bool,
    /// Most writes in one group commit.
    pub max_batch: usize,
    /// SQLite `synchronous`: `full` (every commit is fsynced) or `normal`.
    pub synchronous: String,
    /// SQLite: run the hot reads (by id, pages, counts) on the request's thread within a
    /// 2 ms budget, instead of on the driver's worker threads.
    pub inline_reads: bool,
    #[serde(deserialize_with = "duration")]
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangesConfig {
    /// How long change-log rows are kept (realtime resume window).
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// How often old rows are pruned.
    #[serde(deserialize_with = "duration")]
    pub prune_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest JSON body of a single-document request, in bytes.
    pub json_body: usize,
    /// Largest body of `POST /v1/db/batch`, in bytes.
    pub batch_body: usize,
    /// Most open HTTP connections (WebSockets included); further connections wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// A client must send a request's headers within this time, and an idle keep-alive
    /// connection is closed after it (slowloris).
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
}

/// Object storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where local blobs live (default `<data_dir>/storage`).
    pub dir: Option<PathBuf>,
    /// Blobs no object names, older than this, are deleted by the sweeper.
    #[serde(deserialize_with = "duration")]
    pub sweep_grace: Duration,
    #[serde(deserialize_with = "duration")]
    pub sweep_interval: Duration,
    /// Longest lifetime of a signed URL.
    #[serde(deserialize_with = "duration")]
    pub max_sign_ttl: Duration,
    /// An upload body that sends nothing for this long is abandoned (400).
    #[serde(deserialize_with = "duration")]
    pub body_idle_timeout: Duration,
    /// Bytes each user may keep across all buckets (objects they own); none: unlimited.
    pub user_quota: Option<u64>,
    /// Keep blobs in S3 instead of `dir`.
    pub s3: Option<S3Config>,
}

/// An S3 (or S3-compatible) bucket for blobs. Credentials come from the standard
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub presign_downloads: bool,
    /// Prefix of every blob's S3 key (e.g. `ferrobase/`).
    #[serde(default)]
    pub prefix: String,
    /// Multipart part size in bytes (at least 5 MiB).
    #[serde(default = "default_part_size")]
    pub part_size: usize,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_part_size() -> usize {
    8 * 1024 * 1024
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: None,
            sweep_grace: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(600),
            max_sign_ttl: Duration::from_secs(7 * 24 * 3600),
            body_idle_timeout: Duration::from_secs(60),
            user_quota: None,
            s3: None,
        }
    }
}

/// Cloud code (section 10 of the design).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionsConfig {
    /// Engine threads; each runs one invocation at a time.
    pub workers: usize,
    /// Deadline of a synchronous call (`POST /v1/functions/{name}`).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Deadline of an async invocation, an after-trigger or a cron run.
    #[serde(deserialize_with = "duration")]
    pub async_timeout: Duration,
    /// Deadline of a before-trigger (it holds up the write).
    #[serde(deserialize_with = "duration")]
    pub before_timeout: Duration,
    /// Memory limit of one isolate (one version on one worker), in MiB.
    pub memory_mb: usize,
    /// QuickJS stack limit in KiB (the worker threads have 8 MiB stacks).
    pub stack_kb: usize,
    /// Attempts of an async invocation or after-trigger before it becomes a dead letter.
    pub max_attempts: u32,
    /// First retry delay; doubles with each attempt.
    #[serde(deserialize_with = "duration")]
    pub retry_backoff: Duration,
    /// How long past its deadline a running job's lease lasts. A node that dies mid-run
    /// leaves the lease behind; the job runs again once it expires. The margin covers
    /// clock differences between nodes.
    #[serde(deserialize_with = "duration")]
    pub lease_grace: Duration,
    /// Hosts `fetch` may reach (exact names, `*.example.com` for subdomains); empty:
    /// no `fetch` at all.
    pub fetch_allow: Vec<String>,
    /// Secrets every handler sees as `ctx.env`.
    pub env: BTreeMap<String, String>,
    /// Per-handler settings, by name (`addTodo`, `beforeCreate:todos`, a cron name).
    pub handlers: BTreeMap<String, HandlerConfig>,
}

/// Settings for one handler.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerConfig {
    #[serde(deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Most concurrent invocations of this handler on one node (0: no limit but the pool).
    pub max_concurrency: usize,
    /// Memory limit of the isolate while this handler runs, in MiB (default
    /// `functions.memory_mb`). The isolate holds the version's modules too.
    pub memory_mb: Option<usize>,
    /// QuickJS stack limit while this handler runs, in KiB (default `functions.stack_kb`).
    pub stack_kb: Option<usize>,
    /// Secrets only this handler sees, merged over `functions.env`.
    pub env: BTreeMap<String, String>,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2)
                * 2,
            timeout: Duration::from_secs(10),
            async_timeout: Duration::from_secs(60),
            before_timeout: Duration::from_secs(1),
            memory_mb: 64,
            stack_kb: 1024,
            max_attempts: 3,
            retry_backoff: Duration::from_secs(1),
            lease_grace: Duration::from_secs(30),
            fetch_allow: Vec::new(),
            env: BTreeMap::new(),
            handlers: BTreeMap::new(),
        }
    }
}

/// Realtime over WebSocket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeConfig {
    /// Frames queued for one connection before it is closed with 4008 (the client resumes).
    pub send_queue: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Largest frame a client may send, in bytes.
    pub max_frame: usize,
    /// Most channels one connection may join.
    pub max_channels: usize,
    /// Most open connections from one client address (429 beyond).
    pub max_connections_per_ip: usize,
    /// Most connections signed in as one user at a time (an `auth` beyond is refused with
    /// `too_many_connections`, and the connection stays anonymous).
    pub max_connections_per_user: usize,
    /// Frames a client may send per second (bursts of twice that); beyond, each frame is
    /// answered with a `rate_limited` error and dropped, and a client that keeps going is
    /// closed with 1008.
    pub max_messages_per_second: u32,
    /// A connection is closed with 4009 after this long (the client reconnects and resumes),
    /// so no socket lives on forever.
    #[serde(deserialize_with = "duration")]
    pub max_connection_lifetime: Duration,
    /// The server pings this often; a peer silent for three intervals is closed.
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// Nodes announce themselves this often; a node silent for three intervals is gone and
    /// its channel members leave.
    #[serde(deserialize_with = "duration")]
    pub node_heartbeat: Duration,
    pub channels: ChannelsConfig,
}

/// Realtime channels (presence and broadcast).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// CEL rules with `auth`, `channel {name, presence, payload}`, `request`; a missing
    /// rule allows.
    pub rules: ChannelRules,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelRules {
    pub join: Option<String>,
    pub broadcast: Option<String>,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            send_queue: 1024,
            max_subscriptions: 100,
            max_frame: 64 * 1024,
            max_channels: 20,
            max_connections_per_ip: 1000,
            max_connections_per_user: 100,
            max_messages_per_second: 100,
            max_connection_lifetime: Duration::from_secs(24 * 3600),
            ping_interval: Duration::from_secs(20),
            node_heartbeat: Duration::from_secs(5),
            channels: ChannelsConfig::default(),
        }
    }
}

/// Users, sessions and sign-in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// The server's public base URL: OAuth callbacks are built on it. Empty: the address
    /// the server listens on (`http://127.0.0.1:8090`).
    pub public_url: String,
    #[serde(deserialize_with = "duration")]
    pub access_token_ttl: Duration,
    /// A session (refresh-token family) ends this long after sign-in, whatever happens.
    #[serde(deserialize_with = "duration")]
    pub session_max_age: Duration,
    /// The refresh token just spent is accepted again this long (0 disables).
    #[serde(deserialize_with = "duration")]
    pub refresh_reuse_grace: Duration,
    /// How long a node trusts its cached answer to "is this session still valid?".
    #[serde(deserialize_with = "duration")]
    pub session_check_interval: Duration,
    pub min_password_length: usize,
    pub allow_signup: bool,
    pub allow_anonymous: bool,
    #[serde(deserialize_with = "duration")]
    pub verify_token_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub reset_token_ttl: Duration,
    /// Where OAuth may send users back (`redirect_to`), compared exactly.
    pub redirect_urls: Vec<String>,
    /// Password-hashing threads (each holds 19 MiB; a hash takes ~40 ms of a core). Default:
    /// half the cores.
    pub password_concurrency: usize,
    pub smtp: Option<SmtpConfig>,
    pub wechat: WeChatConfig,
    pub oauth: BTreeMap<String, OAuthProviderConfig>,
    pub rate_limits: RateLimitsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `Name <address>` or an address.
    pub from: String,
    /// `starttls` (default), `tls`, or `none` (local relays only).
    #[serde(default = "default_smtp_tls")]
    pub tls: String,
}

fn default_smtp_port() -> u16 {
    587
}
fn default_smtp_tls() -> String {
    "starttls".into()
}

/// WeChat mini-program login (code2session).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeChatConfig {
    pub app_id: Option<String>,
    pub app_secret: Option<Secret>,
    pub api_base: String,
}

/// An OAuth2 / OpenID Connect provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthProviderConfig {
    /// `github`, `google`, or `oidc` (generic; the default).
    #[serde(default)]
    pub preset: Option<String>,
    pub client_id: String,
    pub client_secret: Secret,
    /// OpenID issuer; endpoints are discovered from it unless given below.
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub authorize_url: Option<String>,
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub userinfo_url: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// A limit: `max` per `window` per client address (`per_ip`) and per account.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub per_ip: u32,
    pub per_account: u32,
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_ip: 0,
            per_account: 0,
            window: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Failed logins count per account; all logins per address.
    pub login: RateLimitConfig,
    pub signup: RateLimitConfig,
    pub anonymous: RateLimitConfig,
    pub refresh: RateLimitConfig,
    /// Reset and verification requests.
    pub reset: RateLimitConfig,
    pub wechat: RateLimitConfig,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        let limit = |per_ip, per_account, secs| RateLimitConfig {
            per_ip,
            per_account,
            window: Duration::from_secs(secs),
        };
        Self {
            login: limit(100, 10, 900),
            signup: limit(30, 0, 3600),
            anonymous: limit(30, 0, 3600),
            refresh: limit(600, 0, 300),
            reset: limit(20, 5, 3600),
            wechat: limit(120, 0, 300),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "ferrobase".into(),
            public_url: String::new(),
            access_token_ttl: Duration::from_secs(15 * 60),
            session_max_age: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(10),
            session_check_interval: Duration::from_secs(5),
            min_password_length: 8,
            allow_signup: true,
            allow_anonymous: true,
            verify_token_ttl: Duration::from_secs(24 * 3600),
            reset_token_ttl: Duration::from_secs(3600),
            redirect_urls: Vec::new(),
            password_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            smtp: None,
            wechat: WeChatConfig::default(),
            oauth: BTreeMap::new(),
            rate_limits: RateLimitsConfig::default(),
        }
    }
}

impl Default for WeChatConfig {
    fn default() -> Self {
        Self {
            app_id: None,
            app_secret: None,
            api_base: "https://api.weixin.qq.com".into(),
        }
    }
}

/// A collection as declared in `ferrobase.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectionDecl {
    /// CEL rules: `list`, `get`, `create`, `update`, `delete`.
    pub rules: RuleSpec,
    pub indexes: Vec<IndexSpec>,
    /// A JSON Schema, as a TOML table or as a string of JSON.
    #[serde(deserialize_with = "json_schema")]
    pub schema: Option<Value>,
}

impl CollectionDecl {
    pub fn spec(&self) -> CollectionSpec {
        CollectionSpec {
            rules: self.rules.clone(),
            indexes: self.indexes.clone(),
            schema: self.schema.clone(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:8090".into(),
            data_dir: PathBuf::from("fb_data"),
            database_url: None,
            service_key: None,
            functions_dir: PathBuf::from("functions"),
            dev: false,
            log: "info,sqlx=warn".into(),
            database: DatabaseConfig::default(),
            changes: ChangesConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            realtime: RealtimeConfig::default(),
            storage: StorageConfig::default(),
            functions: FunctionsConfig::default(),
            buckets: BTreeMap::new(),
            trusted_proxies: Vec::new(),
            collections: BTreeMap::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 8,
            group_commit: true,
            max_batch: 256,
            synchronous: "full".into(),
            inline_reads: true,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for ChangesConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            prune_interval: Duration::from_secs(60),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            json_body: 1024 * 1024 + 64 * 1024,
            batch_body: 16 * 1024 * 1024,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn json_schema<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        Some(Value::String(text)) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("schema is not valid JSON: {e}"))),
        other => Ok(other),
    }
}

/// The kind of value an environment variable carries.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Bool,
    Int,
}

/// Every environment variable that configures the server, and the key it sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("FERROBASE_HTTP", "http"),
    ("FERROBASE_DATA_DIR", "data_dir"),
    ("FERROBASE_DATABASE_URL", "database_url"),
    ("FERROBASE_SERVICE_KEY", "service_key"),
    ("FERROBASE_FUNCTIONS_DIR", "functions_dir"),
    ("FERROBASE_DEV", "dev"),
    ("FERROBASE_LOG", "log"),
    ("FERROBASE_DB_MAX_CONNECTIONS", "database.max_connections"),
    ("FERROBASE_GROUP_COMMIT", "database.group_commit"),
    ("FERROBASE_DB_MAX_BATCH", "database.max_batch"),
    ("FERROBASE_SQLITE_SYNCHRONOUS", "database.synchronous"),
    ("FERROBASE_SQLITE_INLINE_READS", "database.inline_reads"),
    ("FERROBASE_CHANGE_RETENTION", "changes.retention"),
    ("FERROBASE_CHANGE_PRUNE_INTERVAL", "changes.prune_interval"),
    ("FERROBASE_PUBLIC_URL", "auth.public_url"),
    ("FERROBASE_ACCESS_TOKEN_TTL", "auth.access_token_ttl"),
    (
        "FERROBASE_SESSION_CHECK_INTERVAL",
        "auth.session_check_interval",
    ),
    ("FERROBASE_WECHAT_APP_ID", "auth.wechat.app_id"),
    ("FERROBASE_WECHAT_APP_SECRET", "auth.wechat.app_secret"),
    ("FERROBASE_WECHAT_API_BASE", "auth.wechat.api_base"),
    ("FERROBASE_S3_BUCKET", "storage.s3.bucket"),
    ("FERROBASE_S3_ENDPOINT", "storage.s3.endpoint"),
    ("FERROBASE_S3_REGION", "storage.s3.region"),
    ("FERROBASE_S3_PATH_STYLE", "storage.s3.path_style"),
    (
        "FERROBASE_S3_PRESIGN_DOWNLOADS",
        "storage.s3.presign_downloads",
    ),
    ("FERROBASE_S3_PREFIX", "storage.s3.prefix"),
    ("FERROBASE_STORAGE_USER_QUOTA", "storage.user_quota"),
];

fn kind_of(key: &str) -> Kind {
    match key {
        "dev"
        | "database.group_commit"
        | "storage.s3.path_style"
        | "storage.s3.presign_downloads" => Kind::Bool,
        "database.max_connections" | "database.max_batch" | "storage.user_quota" => Kind::Int,
        _ => Kind::Text,
    }
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub http: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub service_key: Option<String>,
    pub functions_dir: Option<PathBuf>,
    pub dev: bool,
    pub s3_bucket: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: bool,
    pub s3_presign_downloads: bool,
}

impl Config {
    /// Loads the layered configuration.
    pub fn load(overrides: &Overrides) -> anyhow::Result<Config> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let file = overrides
            .config
            .clone()
            .or_else(|| env("FERROBASE_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let default = PathBuf::from("ferrobase.toml");
                default.exists().then_some(default)
            });
        let mut table = match &file {
            Some(path) => read_table(path)?,
            None => toml::Table::new(),
        };
        for (name, key) in ENV_VARS {
            if let Some(value) = env(name) {
                let value = scalar(kind_of(key), &value)
                    .with_context(|| format!("environment variable {name}"))?;
                set(&mut table, key, value);
            }
        }
        let text = |v: String| toml::Value::String(v);
        let path = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned());
        if let Some(v) = &overrides.http {
            set(&mut table, "http", text(v.clone()));
        }
        if let Some(v) = &overrides.data_dir {
            set(&mut table, "data_dir", path(v));
        }
        if let Some(v) = &overrides.database_url {
            set(&mut table, "database_url", text(v.clone()));
        }
        if let Some(v) = &overrides.service_key {
            set(&mut table, "service_key", text(v.clone()));
        }
        if let Some(v) = &overrides.functions_dir {
            set(&mut table, "functions_dir", path(v));
        }
        if overrides.dev {
            set(&mut table, "dev", toml::Value::Boolean(true));
        }
        for (key, value) in [
            ("storage.s3.bucket", &overrides.s3_bucket),
            ("storage.s3.endpoint", &overrides.s3_endpoint),
            ("storage.s3.region", &overrides.s3_region),
        ] {
            if let Some(v) = value {
                set(&mut table, key, text(v.clone()));
            }
        }
        if overrides.s3_path_style {
            set(
                &mut table,
                "storage.s3.path_style",
                toml::Value::Boolean(true),
            );
        }
        if overrides.s3_presign_downloads {
            set(
                &mut table,
                "storage.s3.presign_downloads",
                toml::Value::Boolean(true),
            );
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    anyhow::anyhow!("invalid configuration: {}", e.message())
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Reports every problem at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.http.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "http: `{}` is not an address like 127.0.0.1:8090",
                self.http
            ));
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections must be at least 1".to_owned());
        }
        if !(1..=10_000).contains(&self.database.max_batch) {
            problems.push("database.max_batch must be between 1 and 10000".to_owned());
        }
        if !matches!(self.database.synchronous.as_str(), "full" | "normal") {
            problems.push("database.synchronous must be `full` or `normal`".to_owned());
        }
        if self.changes.retention < Duration::from_secs(1) {
            problems.push("changes.retention must be at least 1s".to_owned());
        }
        if self.changes.prune_interval < Duration::from_millis(100) {
            problems.push("changes.prune_interval must be at least 100ms".to_owned());
        }
        if let Some(s3) = &self.storage.s3 {
            if s3.bucket.is_empty() {
                problems.push("storage.s3.bucket must name a bucket".to_owned());
            }
            if s3.part_size < 5 * 1024 * 1024 {
                problems
                    .push("storage.s3.part_size must be at least 5 MiB (S3's minimum)".to_owned());
            }
            if let Some(endpoint) = &s3.endpoint
                && url::Url::parse(endpoint).is_err()
            {
                problems.push(format!("storage.s3.endpoint `{endpoint}` is not a URL"));
            }
        }
        if self.storage.sweep_interval < Duration::from_millis(100) {
            problems.push("storage.sweep_interval must be at least 100ms".to_owned());
        }
        for (name, spec) in &self.buckets {
            if let Err(e) = crate::storage::bucket::check_name(name).and_then(|()| {
                crate::storage::Bucket::compile(
                    name.clone(),
                    spec.clone(),
                    String::new(),
                    String::new(),
                )
                .map(|_| ())
            }) {
                problems.push(format!("buckets.{name}: {e}"));
            }
        }
        let f = &self.functions;
        if !(1..=256).contains(&f.workers) {
            problems.push("functions.workers must be between 1 and 256".to_owned());
        }
        if !(8..=4096).contains(&f.memory_mb) {
            problems.push("functions.memory_mb must be between 8 and 4096".to_owned());
        }
        if !(64..=2048).contains(&f.stack_kb) {
            problems.push(
                "functions.stack_kb must be between 64 and 2048 (a quarter of the 8 MiB worker stack)"
                    .to_owned(),
            );
        }
        for (name, h) in &f.handlers {
            if h.memory_mb.is_some_and(|m| !(8..=4096).contains(&m)) {
                problems.push(format!(
                    "functions.handlers.{name}.memory_mb must be between 8 and 4096"
                ));
            }
            if h.stack_kb.is_some_and(|k| !(64..=2048).contains(&k)) {
                problems.push(format!(
                    "functions.handlers.{name}.stack_kb must be between 64 and 2048"
                ));
            }
        }
        if !(1..=100).contains(&f.max_attempts) {
            problems.push("functions.max_attempts must be between 1 and 100".to_owned());
        }
        for (label, d) in [
            ("timeout", f.timeout),
            ("async_timeout", f.async_timeout),
            ("before_timeout", f.before_timeout),
        ] {
            if d < Duration::from_millis(10) || d > Duration::from_secs(15 * 60) {
                problems.push(format!("functions.{label} must be between 10ms and 15m"));
            }
        }
        for host in &f.fetch_allow {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':')
            {
                problems.push(format!(
                    "functions.fetch_allow: `{host}` is not a host name (example.com, *.example.com, 127.0.0.1:9000)"
                ));
            }
        }
        let rt = &self.realtime;
        if rt.send_queue < 8
            || rt.max_subscriptions == 0
            || rt.max_channels == 0
            || rt.max_connections_per_ip == 0
            || rt.max_messages_per_second == 0
            || rt.max_connections_per_user == 0
            || rt.max_connection_lifetime < Duration::from_secs(1)
        {
            problems.push(
                "realtime: send_queue must be at least 8; max_subscriptions, max_channels, max_connections_per_ip, max_connections_per_user and max_messages_per_second at least 1; max_connection_lifetime at least 1s"
                    .to_owned(),
            );
        }
        if rt.max_frame < 1024 {
            problems.push("realtime.max_frame must be at least 1024 bytes".to_owned());
        }
        if rt.ping_interval < Duration::from_millis(100)
            || rt.node_heartbeat < Duration::from_millis(100)
        {
            problems.push(
                "realtime.ping_interval and realtime.node_heartbeat must be at least 100ms"
                    .to_owned(),
            );
        }
        for (name, rule) in [
            ("join", &rt.channels.rules.join),
            ("broadcast", &rt.channels.rules.broadcast),
        ] {
            if let Some(rule) = rule
                && let Err(e) = crate::rules::Rule::compile(rule, crate::rules::Scope::Channel)
            {
                problems.push(format!("realtime.channels.rules.{name}: {e}"));
            }
        }
        if self.auth.min_password_length < 6 {
            problems.push("auth.min_password_length must be at least 6".to_owned());
        }
        if self.auth.access_token_ttl < Duration::from_secs(1) {
            problems.push("auth.access_token_ttl must be at least 1s".to_owned());
        }
        if !self.auth.public_url.is_empty() && url::Url::parse(&self.auth.public_url).is_err() {
            problems.push(format!(
                "auth.public_url `{}` is not a URL",
                self.auth.public_url
            ));
        }
        for redirect in &self.auth.redirect_urls {
            if url::Url::parse(redirect).is_err() {
                problems.push(format!("auth.redirect_urls: `{redirect}` is not a URL"));
            }
        }
        for proxy in &self.trusted_proxies {
            if crate::http::client_ip::Cidr::parse(proxy).is_none() {
                problems.push(format!(
                    "trusted_proxies: `{proxy}` is not an IP address or CIDR"
                ));
            }
        }
        for (name, provider) in &self.auth.oauth {
            let preset = provider.preset.as_deref().unwrap_or("oidc");
            if !matches!(preset, "oidc" | "google" | "github") {
                problems.push(format!(
                    "auth.oauth.{name}.preset must be oidc, google or github"
                ));
            }
            let explicit = provider.authorize_url.is_some() && provider.token_url.is_some();
            if preset == "oidc" && provider.issuer.is_none() && !explicit {
                problems.push(format!(
                    "auth.oauth.{name}: an OIDC provider needs `issuer` or `authorize_url` + `token_url`"
                ));
            }
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                problems.push(format!(
                    "auth.oauth.{name}: provider names are letters, digits, `_`, `-`"
                ));
            }
        }
        if self.limits.json_body < 1024 || self.limits.batch_body < 1024 {
            problems
                .push("limits.json_body and limits.batch_body must be at least 1024".to_owned());
        }
        if self.limits.max_connections == 0 || self.limits.header_read_timeout.is_zero() {
            problems.push(
                "limits.max_connections and limits.header_read_timeout must be above zero"
                    .to_owned(),
            );
        }
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                problems.push("database_url must start with postgres:// or sqlite:".to_owned());
            }
        }
        for (name, decl) in &self.collections {
            if let Err(e) = crate::documents::collection::CollectionName::parse(name) {
                problems.push(format!("collections.{name}: {e}"));
            }
            if let Err(e) = decl.spec().check() {
                problems.push(format!("collections.{name}: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "))
        }
    }

    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        self.http
            .parse()
            .with_context(|| format!("invalid http address `{}`", self.http))
    }

    pub fn store_options(&self) -> crate::store::Options {
        crate::store::Options {
            database_url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
            max_connections: self.database.max_connections,
            group_commit: self.database.group_commit,
            max_batch: self.database.max_batch,
            sqlite_synchronous: self.database.synchronous.clone(),
            sqlite_inline_reads: self.database.inline_reads,
            acquire_timeout: self.database.acquire_timeout,
        }
    }
}

fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))
}

fn scalar(kind: Kind, value: &str) -> anyhow::Result<toml::Value> {
    Ok(match kind {
        Kind::Text => toml::Value::String(value.to_owned()),
        Kind::Bool => toml::Value::Boolean(match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => anyhow::bail!("expected true or false, got `{value}`"),
        }),
        Kind::Int => toml::Value::Integer(
            value
                .parse()
                .with_context(|| format!("expected a whole number, got `{value}`"))?,
        ),
    })
}

/// Sets a dotted key in a TOML table, creating sub-tables.
fn set(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.to_owned(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ferrobase.example.toml");
        let config = Config::load(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .expect("ferrobase.example.toml should load");
        assert!(config.collections.contains_key("todos"));
        assert_eq!(config.changes.retention, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "htp = 1\n").unwrap();
        assert!(
            Config::load(&Overrides {
                config: Some(path.clone()),
                ..Default::default()
            })
            .is_err()
        );
        std::fs::write(&path, "http = 'nope'\n[database]\nmax_batch = 0\n").unwrap();
        let err = Config::load(&Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("http") && err.contains("max_batch"), "{err}");
    }

    #[test]
    fn the_readme_documents_every_environment_variable() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .unwrap();
        for (name, _) in ENV_VARS {
            assert!(readme.contains(name), "README.md does not mention {name}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "http = '127.0.0.1:1'\n[changes]\nretention = '2h'\n").unwrap();
        let config = Config::load(&Overrides {
            config: Some(path),
            http: Some("127.0.0.1:2".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.http, "127.0.0.1:2");
        assert_eq!(config.changes.retention, Duration::from_secs(7200));
    }
}
