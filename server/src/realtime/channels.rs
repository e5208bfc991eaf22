//! Channels: presence and broadcast, on one node or many.
//!
//! Each node keeps the full member list of every channel: its own members (with their
//! connections) and other nodes' (learned from their messages). Between nodes the messages
//! travel through the store's relay (Postgres `NOTIFY` on `fb_realtime`; nothing on SQLite,
//! which has one node): `join`, `leave`, `broadcast`, a periodic `beat` that says a node is
//! alive, and `hello`, which asks the others to announce their members again (a node that
//! starts, or whose `LISTEN` connection came back). A node silent for three heartbeats is
//! gone: its members leave.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::conn::Conn;
use super::protocol;
use crate::store::Store;

/// Largest presence payload, as JSON text (it travels in a `NOTIFY`).
pub const MAX_PRESENCE: usize = 1024;
/// Largest broadcast payload, as JSON text (a `NOTIFY` carries at most 8000 bytes).
pub const MAX_PAYLOAD: usize = 6 * 1024;
/// Longest channel name.
pub const MAX_CHANNEL_NAME: usize = 128;

/// A channel member as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub key: String,
    pub user_id: Option<String>,
    pub presence: Value,
}

struct Entry {
    member: Member,
    node: String,
    /// Set for members connected to this node.
    conn: Option<Arc<Conn>>,
}

/// What nodes tell each other.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Relay {
    Join {
        node: String,
        ch: String,
        m: Member,
    },
    Leave {
        node: String,
        ch: String,
        key: String,
    },
    Broadcast {
        node: String,
        ch: String,
        from: Member,
        p: Value,
    },
    Beat {
        node: String,
    },
    Hello {
        node: String,
    },
}

#[derive(Default)]
struct State {
    channels: HashMap<String, BTreeMap<String, Entry>>,
    nodes: HashMap<String, Instant>,
}

/// The channels of one node.
pub struct Channels {
    node: String,
    state: Mutex<State>,
    store: Store,
}

impl Channels {
    pub fn new(store: Store) -> Channels {
        Channels {
            node: crate::util::id::new_id(),
            state: Mutex::new(State::default()),
            store,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The member key of a connection on this node.
    pub fn member_key(&self, conn: &Conn) -> String {
        format!("{}-{}", self.node, conn.id)
    }

    /// Adds (or updates) a local member; it receives the member list, the others a join.
    pub async fn join(&self, conn: &Arc<Conn>, channel: &str, member: Member) {
        let others = {
            let mut state = self.lock();
            let members = state.channels.entry(channel.to_owned()).or_default();
            let all: Vec<Value> = members
                .values()
                .filter(|e| e.member.key != member.key)
                .map(|e| json!(e.member))
                .chain(std::iter::once(json!(member)))
                .collect();
            conn.push(protocol::presence(channel, &all, &[]));
            members.insert(
                member.key.clone(),
                Entry {
                    member: member.clone(),
                    node: self.node.clone(),
                    conn: Some(conn.clone()),
                },
            );
            local_conns(members, Some(&member.key))
        };
        let frame = protocol::presence(channel, &[json!(member)], &[]);
        for other in others {
            other.push(frame.clone());
        }
        self.relay(&Relay::Join {
            node: self.node.clone(),
            ch: channel.to_owned(),
            m: member,
        })
        .await;
    }

    /// Removes a local member; the others get a leave.
    pub async fn leave(&self, channel: &str, key: &str) {
        if self.remove(channel, key) {
            self.relay(&Relay::Leave {
                node: self.node.clone(),
                ch: channel.to_owned(),
                key: key.to_owned(),
            })
            .await;
        }
    }

    fn remove(&self, channel: &str, key: &str) -> bool {
        let (member, others) = {
            let mut state = self.lock();
            let Some(members) = state.channels.get_mut(channel) else {
                return false;
            };
            let Some(entry) = members.remove(key) else {
                return false;
            };
            let others = local_conns(members, None);
            if members.is_empty() {
                state.channels.remove(channel);
            }
            (entry.member, others)
        };
        let frame = protocol::presence(channel, &[], &[json!(member)]);
        for other in others {
            other.push(frame.clone());
        }
        true
    }

    /// The member `key` of `channel`, if there is one.
    pub fn member(&self, channel: &str, key: &str) -> Option<Member> {
        self.lock()
            .channels
            .get(channel)
            .and_then(|m| m.get(key))
            .map(|e| e.member.clone())
    }

    /// Sends `payload` to every other member of the channel, on every node.
    pub async fn broadcast(&self, channel: &str, from: &Member, payload: &Value) {
        self.deliver_broadcast(channel, from, payload);
        self.relay(&Relay::Broadcast {
            node: self.node.clone(),
            ch: channel.to_owned(),
            from: from.clone(),
            p: payload.clone(),
        })
        .await;
    }

    fn deliver_broadcast(&self, channel: &str, from: &Member, payload: &Value) {
        let conns = match self.lock().channels.get(channel) {
            Some(members) => local_conns(members, Some(&from.key)),
            None => return,
        };
        let frame = protocol::broadcast(channel, &json!(from), payload);
        for conn in conns {
            conn.push(frame.clone());
        }
    }

    async fn relay(&self, message: &Relay) {
        if self.store.kind() != crate::store::Kind::Postgres {
            return;
        }
        let Ok(text) = serde_json::to_string(message) else {
            return;
        };
        if let Err(e) = self.store.notify_realtime(&text).await {
            tracing::warn!(error = %e, "realtime relay failed");
        }
    }

    /// Handles other nodes' messages and sends heartbeats, until `stop`.
    pub async fn run(self: Arc<Self>, heartbeat: Duration, mut stop: watch::Receiver<bool>) {
        if self.store.kind() != crate::store::Kind::Postgres {
            return;
        }
        let mut inbox = self.store.subscribe_realtime();
        self.relay(&Relay::Hello {
            node: self.node.clone(),
        })
        .await;
        let mut beat = tokio::time::interval(heartbeat);
        loop {
            tokio::select! {
                message = inbox.recv() => match message {
                    Ok(text) => self.receive(&text).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed messages: ask everyone to announce their members again.
                        self.relay(&Relay::Hello { node: self.node.clone() }).await;
                    }
                    Err(_) => return,
                },
                _ = beat.tick() => {
                    self.relay(&Relay::Beat { node: self.node.clone() }).await;
                    self.expire_nodes(heartbeat * 3);
                }
                _ = stop.changed() => return,
            }
        }
    }

    async fn receive(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Relay>(text) else {
            return;
        };
        match message {
            Relay::Join { node, ch, m } if node != self.node => {
                self.seen(&node);
                self.remote_join(&node, &ch, m);
            }
            Relay::Leave { node, ch, key } if node != self.node => {
                self.seen(&node);
                self.remove(&ch, &key);
            }
            Relay::Broadcast { node, ch, from, p } if node != self.node => {
                self.seen(&node);
                self.deliver_broadcast(&ch, &from, &p);
            }
            Relay::Beat { node } if node != self.node => self.seen(&node),
            Relay::Hello { node } if node != self.node => {
                self.seen(&node);
                let mine: Vec<(String, Member)> = {
                    let state = self.lock();
                    state
                        .channels
                        .iter()
                        .flat_map(|(ch, members)| {
                            members
                                .values()
                                .filter(|e| e.conn.is_some())
                                .map(|e| (ch.clone(), e.member.clone()))
                        })
                        .collect()
                };
                for (ch, m) in mine {
                    self.relay(&Relay::Join {
                        node: self.node.clone(),
                        ch,
                        m,
                    })
                    .await;
                }
            }
            _ => {}
        }
    }

    fn seen(&self, node: &str) {
        self.lock().nodes.insert(node.to_owned(), Instant::now());
    }

    fn remote_join(&self, node: &str, channel: &str, member: Member) {
        let others = {
            let mut state = self.lock();
            let members = state.channels.entry(channel.to_owned()).or_default();
            if members.get(&member.key).is_some_and(|e| e.member == member) {
                return;
            }
            members.insert(
                member.key.clone(),
                Entry {
                    member: member.clone(),
                    node: node.to_owned(),
                    conn: None,
                },
            );
            local_conns(members, None)
        };
        let frame = protocol::presence(channel, &[json!(member)], &[]);
        for conn in others {
            conn.push(frame.clone());
        }
    }

    /// Members of nodes not heard from within `timeout` leave.
    fn expire_nodes(&self, timeout: Duration) {
        let gone: Vec<(String, String)> = {
            let mut state = self.lock();
            let dead: Vec<String> = state
                .nodes
                .iter()
                .filter(|(_, at)| at.elapsed() > timeout)
                .map(|(n, _)| n.clone())
                .collect();
            for node in &dead {
                state.nodes.remove(node);
            }
            state
                .channels
                .iter()
                .flat_map(|(ch, members)| {
                    members
                        .iter()
                        .filter(|(_, e)| e.conn.is_none() && dead.contains(&e.node))
                        .map(|(key, _)| (ch.clone(), key.clone()))
                })
                .collect()
        };
        for (ch, key) in gone {
            self.remove(&ch, &key);
        }
    }
}

fn local_conns(members: &BTreeMap<String, Entry>, except: Option<&String>) -> Vec<Arc<Conn>> {
    members
        .iter()
        .filter(|(key, _)| Some(*key) != except)
        .filter_map(|(_, e)| e.conn.clone())
        .collect()
}
