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

use crate::documents::collection::{CollectionSpec, IndexSpec};
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
}

/// A collection as declared in `ferrobase.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectionDecl {
    pub indexes: Vec<IndexSpec>,
    /// A JSON Schema, as a TOML table or as a string of JSON.
    #[serde(deserialize_with = "json_schema")]
    pub schema: Option<Value>,
}

impl CollectionDecl {
    pub fn spec(&self) -> CollectionSpec {
        CollectionSpec {
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
    ("FERROBASE_CHANGE_RETENTION", "changes.retention"),
    ("FERROBASE_CHANGE_PRUNE_INTERVAL", "changes.prune_interval"),
];

fn kind_of(key: &str) -> Kind {
    match key {
        "dev" | "database.group_commit" => Kind::Bool,
        "database.max_connections" | "database.max_batch" => Kind::Int,
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
        if self.limits.json_body < 1024 || self.limits.batch_body < 1024 {
            problems
                .push("limits.json_body and limits.batch_body must be at least 1024".to_owned());
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
            if let Err(e) = crate::documents::collection::index_defs(&decl.indexes) {
                problems.push(format!("collections.{name}.indexes: {e}"));
            }
            if let Some(schema) = &decl.schema
                && let Err(e) = crate::documents::collection::compile_schema(schema)
            {
                problems.push(format!("collections.{name}.schema: {e}"));
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
