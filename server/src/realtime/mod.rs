//! Realtime over WebSocket (section 9): rule-checked subscriptions fed from the durable
//! change log, gap-free resume, channels with presence and broadcast, many nodes.
//!
//! - [`hub`]: subscriptions by collection and the tailer that dispatches the change log.
//! - [`channels`]: presence and broadcast, relayed between nodes through the store.
//! - [`session`]: one connection's protocol state (auth, subscriptions, channels).
//! - [`conn`]: what producers see of a connection (caller, bounded outbox, close).
//!
//! The socket itself belongs to `http::realtime`; nothing here knows axum.

pub mod channels;
pub mod conn;
pub mod hub;
pub mod protocol;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::Auth;
use crate::auth::service_key::ServiceKey;
use crate::changes::Changes;
use crate::config::RealtimeConfig;
use crate::documents::Documents;
use crate::rules::{Rule, Scope};

pub use conn::{Conn, Out};
pub use session::Session;

/// The realtime service of one node.
pub struct Realtime {
    hub: Arc<hub::Hub>,
    channels: Arc<channels::Channels>,
    documents: Documents,
    changes: Changes,
    auth: Arc<Auth>,
    service_key: ServiceKey,
    config: RealtimeConfig,
    join_rule: Option<Rule>,
    broadcast_rule: Option<Rule>,
    stop: watch::Receiver<bool>,
    connections: AtomicUsize,
    per_ip: Arc<Quota<std::net::IpAddr>>,
    /// Connections signed in as one user (held while signed in).
    per_user: Arc<Quota<String>>,
}

/// At most `max` connections per key (client address, user); a [`Slot`] holds one place.
pub struct Quota<K: std::hash::Hash + Eq + Clone> {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<K, usize>>,
}

impl<K: std::hash::Hash + Eq + Clone> Quota<K> {
    fn new(max: usize) -> Arc<Quota<K>> {
        Arc::new(Quota {
            max,
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// A place for one more connection under `key`, or `None` when all are taken.
    fn admit(self: &Arc<Self>, key: &K) -> Option<Slot<K>> {
        let mut map = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(key.clone()).or_insert(0);
        if *open >= self.max {
            return None;
        }
        *open += 1;
        Some(Slot {
            quota: self.clone(),
            key: key.clone(),
        })
    }
}

/// One place in a [`Quota`]; freed on drop.
pub struct Slot<K: std::hash::Hash + Eq + Clone> {
    quota: Arc<Quota<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Slot<K> {
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = self.quota.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Realtime {
    /// Builds the service and starts its tasks (the tailer, the node relay).
    pub fn start(
        documents: Documents,
        changes: Changes,
        auth: Arc<Auth>,
        service_key: ServiceKey,
        config: RealtimeConfig,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<Realtime>, Vec<tokio::task::JoinHandle<()>>)> {
        let compile = |rule: &Option<String>| {
            rule.as_deref()
                .map(|r| Rule::compile(r, Scope::Channel))
                .transpose()
        };
        let join_rule = compile(&config.channels.rules.join)
            .map_err(|e| anyhow::anyhow!("realtime.channels.rules.join: {e}"))?;
        let broadcast_rule = compile(&config.channels.rules.broadcast)
            .map_err(|e| anyhow::anyhow!("realtime.channels.rules.broadcast: {e}"))?;
        let position = *changes.subscribe().borrow();
        let hub = Arc::new(hub::Hub::new(documents.catalog().clone(), position));
        let channels = Arc::new(channels::Channels::new(documents.store().clone()));
        let tasks = vec![
            tokio::spawn(hub.clone().run(changes.clone(), stop.clone())),
            tokio::spawn(channels.clone().run(config.node_heartbeat, stop.clone())),
        ];
        let per_ip = Quota::new(config.max_connections_per_ip);
        let per_user = Quota::new(config.max_connections_per_user);
        let realtime = Arc::new(Realtime {
            hub,
            channels,
            documents,
            changes,
            auth,
            service_key,
            config,
            join_rule,
            broadcast_rule,
            stop,
            connections: AtomicUsize::new(0),
            per_ip,
            per_user,
        });
        Ok((realtime, tasks))
    }

    pub fn config(&self) -> &RealtimeConfig {
        &self.config
    }

    /// Resolves when the server begins to shut down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// A place for one more connection from `ip`, or `None` when the address already has
    /// `realtime.max_connections_per_ip`.
    pub fn admit(&self, ip: std::net::IpAddr) -> Option<Slot<std::net::IpAddr>> {
        self.per_ip.admit(&ip)
    }

    /// A place for one more connection signed in as `user`, or `None` when the user
    /// already holds `realtime.max_connections_per_user`.
    pub fn admit_user(&self, user: &str) -> Option<Slot<String>> {
        self.per_user.admit(&user.to_owned())
    }

    /// A session for a new connection.
    pub fn session(self: &Arc<Self>, conn: Arc<Conn>) -> Session {
        let open = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("ferrobase_realtime_connections").set(open as f64);
        Session::new(self.clone(), conn)
    }

    fn session_ended(&self) {
        let open = self
            .connections
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!("ferrobase_realtime_connections").set(open as f64);
    }

    /// Waits (at most `timeout`) until every connection has ended.
    pub async fn wait_idle(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.connections.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
