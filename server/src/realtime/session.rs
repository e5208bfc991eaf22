//! One connection's protocol state: who it is, what it subscribed to, which channels it
//! joined. The socket loop (in `http::realtime`) feeds it client frames and deadlines.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::Realtime;
use super::channels::{self, Member};
use super::conn::Conn;
use super::hub::{Change, Sub};
use super::protocol::{self, ClientMsg};
use crate::auth::{Caller, Principal};
use crate::documents::access::Operation;
use crate::documents::{self, QueryRequest};
use crate::query::{Filter, limits};
use crate::rules::{Rule, Vars};

/// Longest subscription id.
const MAX_SUB_ID: usize = 64;

/// What a subscription was asked for; kept to restart it after re-auth.
#[derive(Clone)]
struct Spec {
    id: String,
    collection: String,
    filter: Filter,
    filter_json: Value,
    doc_id: Option<String>,
    /// Made while signed in: suspended when the sign-in ends.
    authenticated: bool,
}

/// The state of one connection.
pub struct Session {
    rt: Arc<Realtime>,
    conn: Arc<Conn>,
    subs: HashMap<String, Spec>,
    /// Suspended by an expired sign-in, with the seq they stopped after.
    suspended: Vec<(Spec, i64)>,
    channels: HashSet<String>,
    token: Option<String>,
    expires_at: Option<Instant>,
    next_check: Option<Instant>,
    /// Held while signed in as a user (the per-user connection quota).
    user_slot: Option<super::Slot<String>>,
}

/// An error frame's code and message.
struct Fail(&'static str, String);

impl Fail {
    fn bad(message: impl Into<String>) -> Fail {
        Fail("bad_request", message.into())
    }
}

impl From<documents::Error> for Fail {
    fn from(e: documents::Error) -> Fail {
        use documents::Error as E;
        match e {
            E::CollectionNotFound(name) => Fail(
                "collection_not_found",
                format!("collection `{name}` does not exist"),
            ),
            E::Forbidden(m) => Fail("forbidden", m),
            E::BadRequest(m) => Fail("bad_request", m),
            E::NotFound => Fail("not_found", "not found".into()),
            E::Unavailable(cause) => {
                tracing::warn!(%cause, "realtime: database unavailable");
                Fail("unavailable", "the database is unavailable; retry".into())
            }
            other => {
                tracing::error!(error = %other, "realtime: unexpected error");
                Fail("internal", "internal error".into())
            }
        }
    }
}

impl Session {
    pub(super) fn new(rt: Arc<Realtime>, conn: Arc<Conn>) -> Session {
        Session {
            rt,
            conn,
            subs: HashMap::new(),
            suspended: Vec::new(),
            channels: HashSet::new(),
            token: None,
            expires_at: None,
            next_check: None,
            user_slot: None,
        }
    }

    fn send_error(&self, id: Option<&str>, fail: Fail) {
        self.conn.push(protocol::error(id, fail.0, &fail.1));
    }

    /// Handles one text frame; a malformed one gets an `error` and changes nothing.
    pub async fn handle_text(&mut self, text: &str) {
        let message = match serde_json::from_str::<ClientMsg>(text) {
            Ok(m) => m,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
                return self.send_error(id.as_deref(), Fail::bad(format!("malformed frame: {e}")));
            }
        };
        match message {
            ClientMsg::Ping {} => {
                self.conn.push(protocol::pong());
            }
            ClientMsg::Auth { token } => self.authenticate(token).await,
            ClientMsg::Subscribe {
                id,
                collection,
                filter,
                doc_id,
                snapshot,
                resume_from,
            } => {
                if let Err(fail) = self
                    .subscribe(
                        id.clone(),
                        collection,
                        filter,
                        doc_id,
                        snapshot,
                        resume_from.map(|s| s.0),
                    )
                    .await
                {
                    self.send_error(Some(&id), fail);
                }
            }
            ClientMsg::Unsubscribe { id } => self.unsubscribe(&id),
            ClientMsg::Join { channel, presence } => {
                if let Err(fail) = self.join(&channel, presence.unwrap_or(Value::Null)).await {
                    self.send_error(Some(&channel), fail);
                }
            }
            ClientMsg::Leave { channel } => {
                if self.channels.remove(&channel) {
                    let key = self.rt.channels.member_key(&self.conn);
                    self.rt.channels.leave(&channel, &key).await;
                } else {
                    self.send_error(
                        Some(&channel),
                        Fail("not_joined", "not in this channel".into()),
                    );
                }
            }
            ClientMsg::Broadcast { channel, payload } => {
                if let Err(fail) = self.broadcast(&channel, payload).await {
                    self.send_error(Some(&channel), fail);
                }
            }
        }
    }

    // ---- auth ----

    async fn authenticate(&mut self, token: Option<String>) {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            // Signing out: subscriptions made while signed in wait for the next sign-in.
            self.sign_out();
            self.conn.push(protocol::authed(None, "anonymous", None));
            return;
        };
        match self.resolve(&token).await {
            Ok((principal, exp)) => {
                if let Some(user) = principal.user_id() {
                    let held = self.user_slot.as_ref().is_some_and(|s| s.key() == user);
                    if !held {
                        match self.rt.admit_user(user) {
                            Some(slot) => self.user_slot = Some(slot),
                            None => {
                                self.sign_out();
                                self.send_error(
                                    None,
                                    Fail(
                                        "too_many_connections",
                                        "this user has too many realtime connections open; the connection is now anonymous".into(),
                                    ),
                                );
                                return;
                            }
                        }
                    }
                } else {
                    self.user_slot = None;
                }
                let role = match &principal {
                    Principal::User(u) => u.role.clone(),
                    Principal::Admin { .. } => "admin".into(),
                    Principal::Service => "service".into(),
                    Principal::Anonymous => "anonymous".into(),
                };
                self.conn
                    .push(protocol::authed(principal.user_id(), &role, exp));
                self.set_principal(principal);
                self.expires_at = exp.map(instant_at);
                self.next_check = exp.map(|_| Instant::now() + self.check_interval());
                self.token = Some(token);
                self.resume_suspended().await;
            }
            // A failed sign-in never leaves the connection at its previous identity: it
            // becomes anonymous (signed-in subscriptions are suspended until a valid `auth`).
            Err(crate::auth::Error::TokenExpired) => {
                self.sign_out();
                self.send_error(
                    None,
                    Fail(
                        "auth_expired",
                        "the access token has expired; refresh it".into(),
                    ),
                )
            }
            Err(crate::auth::Error::Unavailable(_)) => self.send_error(
                None,
                Fail("unavailable", "the database is unavailable; retry".into()),
            ),
            Err(_) => {
                self.sign_out();
                self.send_error(
                    None,
                    Fail(
                        "unauthenticated",
                        "invalid token; the connection is now anonymous".into(),
                    ),
                )
            }
        }
    }

    /// The principal a token stands for and, for access tokens, when it expires.
    async fn resolve(&self, token: &str) -> Result<(Principal, Option<i64>), crate::auth::Error> {
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return if self.rt.service_key.matches(token) {
                Ok((Principal::Service, None))
            } else {
                Err(crate::auth::Error::InvalidToken)
            };
        }
        let (principal, exp) = self.rt.auth.authenticate_until(token).await?;
        // No clock-skew leeway here: the connection stays open past `exp` only if the
        // client re-authenticates, so a token is over at `exp` exactly.
        if exp <= unix_now() {
            return Err(crate::auth::Error::TokenExpired);
        }
        Ok((principal, Some(exp)))
    }

    fn set_principal(&self, principal: Principal) {
        let current = self.conn.caller();
        self.conn.set_caller(Caller {
            principal,
            ip: current.ip,
            method: "GET",
            depth: 0,
        });
    }

    fn check_interval(&self) -> Duration {
        // As often as a request would re-check it, but at most once a second per connection.
        self.rt
            .auth
            .config()
            .session_check_interval
            .max(Duration::from_secs(1))
    }

    /// The next moment the session must look at its sign-in.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.expires_at, self.next_check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expiry or a periodic re-check of the session (revocation, role changes).
    pub async fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.expires_at.is_some_and(|at| at <= now) {
            return self.expire("the access token has expired; send a fresh one with `auth`");
        }
        let Some(token) = self.token.clone() else {
            self.next_check = None;
            return;
        };
        match self.resolve(&token).await {
            Ok((principal, _)) => {
                self.set_principal(principal);
                self.next_check = Some(now + self.check_interval());
            }
            Err(crate::auth::Error::TokenExpired) => {
                self.expire("the access token has expired; send a fresh one with `auth`")
            }
            Err(crate::auth::Error::Unavailable(_)) => {
                self.next_check = Some(now + self.check_interval());
            }
            Err(_) => self.expire("the session has ended; sign in again"),
        }
    }

    fn expire(&mut self, message: &str) {
        self.sign_out();
        self.send_error(None, Fail("auth_expired", message.into()));
    }

    /// Back to anonymous; signed-in subscriptions are suspended where they stand.
    fn sign_out(&mut self) {
        // Unregister first: a change dispatched in between must not be judged as anonymous
        // for a subscription that will resume after it (it would be lost).
        let signed_in: Vec<String> = self
            .subs
            .values()
            .filter(|s| s.authenticated)
            .map(|s| s.id.clone())
            .collect();
        for id in signed_in {
            if let Some(spec) = self.subs.remove(&id) {
                let at = self
                    .rt
                    .hub
                    .unregister(self.conn.id, &spec.collection, &spec.id);
                self.suspended.push((spec, at));
            }
        }
        self.set_principal(Principal::Anonymous);
        self.token = None;
        self.expires_at = None;
        self.next_check = None;
        self.user_slot = None;
    }

    async fn resume_suspended(&mut self) {
        for (spec, at) in std::mem::take(&mut self.suspended) {
            let id = spec.id.clone();
            if let Err(fail) = self.start(spec, false, Some(at)).await {
                self.send_error(Some(&id), fail);
            }
        }
    }

    // ---- subscriptions ----

    async fn subscribe(
        &mut self,
        id: String,
        collection: String,
        filter: Option<Value>,
        doc_id: Option<String>,
        snapshot: bool,
        resume_from: Option<i64>,
    ) -> Result<(), Fail> {
        if id.is_empty() || id.len() > MAX_SUB_ID {
            return Err(Fail::bad(format!("`id` is 1 to {MAX_SUB_ID} bytes")));
        }
        if self.subs.contains_key(&id) || self.suspended.iter().any(|(s, _)| s.id == id) {
            return Err(Fail(
                "conflict",
                format!("subscription `{}` already exists", id),
            ));
        }
        if self.subs.len() + self.suspended.len() >= self.rt.config.max_subscriptions {
            return Err(Fail(
                "too_many_subscriptions",
                format!(
                    "a connection holds at most {} subscriptions",
                    self.rt.config.max_subscriptions
                ),
            ));
        }
        let filter_json = match filter {
            None | Some(Value::Null) => json!({}),
            Some(f) => f,
        };
        let filter = Filter::parse(&filter_json).map_err(|e| Fail::bad(e.0))?;
        let doc_id = doc_id.map(|d| documents::parse_doc_id(&d)).transpose()?;
        let caller = self.conn.caller();
        let spec = Spec {
            id,
            collection,
            filter,
            filter_json,
            doc_id,
            authenticated: !matches!(caller.principal, Principal::Anonymous),
        };
        self.start(spec, snapshot, resume_from).await
    }

    /// Registers a subscription, replays or snapshots, then opens it to live events.
    async fn start(
        &mut self,
        spec: Spec,
        snapshot: bool,
        resume_from: Option<i64>,
    ) -> Result<(), Fail> {
        let caller = self.conn.caller();
        let coll = self.rt.hub.catalog().require(&spec.collection)?;
        self.rt
            .hub
            .access()
            .precheck(&caller, &coll, Operation::Get)?;
        // Watching a whole collection is a live list: it needs a `list` rule too.
        if snapshot || spec.doc_id.is_none() {
            let access = self.rt.hub.access();
            access.precheck(&caller, &coll, Operation::List)?;
            // A list rule that can match nothing for this caller (`auth != null && …` for
            // an anonymous connection, `auth.id == '…'` for someone else) refuses the
            // subscription outright, as Firestore refuses a listener its rules rule out;
            // a REST list answers the same caller with an empty page.
            if spec.doc_id.is_none() && access.list_filter(&caller, &coll)? == Filter::False {
                return Err(Fail(
                    "forbidden",
                    format!(
                        "the `list` rule of `{}` allows you no document",
                        spec.collection
                    ),
                ));
            }
        }
        let sub = Arc::new(Sub::new(
            self.conn.clone(),
            spec.id.clone(),
            spec.collection.clone(),
            spec.filter.clone(),
            spec.doc_id.clone(),
            self.rt.config.send_queue,
        ));
        let position = self.rt.hub.register(sub.clone());
        let outcome = self
            .prime(&sub, &spec, position, snapshot, resume_from)
            .await;
        if let Err(fail) = outcome {
            self.rt
                .hub
                .unregister(self.conn.id, &spec.collection, &spec.id);
            return Err(fail);
        }
        sub.open_gate().await;
        self.subs.insert(spec.id.clone(), spec);
        Ok(())
    }

    /// What a subscription receives before its live events: `subscribed`, the replay, the
    /// snapshot.
    async fn prime(
        &self,
        sub: &Sub,
        spec: &Spec,
        position: i64,
        snapshot: bool,
        resume_from: Option<i64>,
    ) -> Result<(), Fail> {
        if let Some(from) = resume_from {
            let oldest = self
                .rt
                .changes
                .oldest_seq()
                .await
                .map_err(documents::Error::from)?;
            let expired = from > position || oldest.is_some_and(|o| from < o - 1);
            if expired {
                return Err(Fail(
                    "resume_expired",
                    format!(
                        "seq {from} is outside the change log (it keeps {}); refetch and subscribe again",
                        humantime::format_duration(self.rt.changes.retention())
                    ),
                ));
            }
        }
        self.conn
            .push_wait(protocol::subscribed(&spec.id, position))
            .await;
        if let Some(from) = resume_from {
            self.replay(sub, from, position).await?;
        }
        if snapshot {
            let caller = self.conn.caller();
            let mut parts = vec![spec.filter_json.clone()];
            if let Some(id) = &spec.doc_id {
                parts.push(json!({ "_id": id }));
            }
            let page = self
                .rt
                .documents
                .query(
                    &caller,
                    &spec.collection,
                    QueryRequest {
                        filter: json!({ "$and": parts }),
                        limit: Some(limits::MAX_LIMIT),
                        ..QueryRequest::default()
                    },
                )
                .await?;
            self.conn
                .push_wait(protocol::snapshot(&spec.id, &page.items, &page.next_cursor))
                .await;
        }
        Ok(())
    }

    /// Sends the changes in `(from, to]` this subscription sees, in order.
    async fn replay(&self, sub: &Sub, from: i64, to: i64) -> Result<(), Fail> {
        let mut cursor = from;
        while cursor < to {
            let rows = self
                .rt
                .changes
                .after(cursor, 500)
                .await
                .map_err(documents::Error::from)?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                if row.seq > to {
                    return Ok(());
                }
                cursor = row.seq;
                if row.collection != sub.collection {
                    continue;
                }
                let Some(coll) = self.rt.hub.catalog().get(&row.collection) else {
                    continue;
                };
                if let Some(change) = Change::parse(row)
                    && let Some(frame) = sub.frame_for(self.rt.hub.access(), &coll, &change)
                    && !self.conn.push_wait(frame).await
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn unsubscribe(&mut self, id: &str) {
        if let Some(spec) = self.subs.remove(id) {
            self.rt.hub.unregister(self.conn.id, &spec.collection, id);
        } else if let Some(i) = self.suspended.iter().position(|(s, _)| s.id == id) {
            self.suspended.remove(i);
        } else {
            return self.send_error(Some(id), Fail("not_found", "no such subscription".into()));
        }
        self.conn.push(protocol::unsubscribed(id));
    }

    // ---- channels ----

    fn channel_rule_allows(&self, rule: Option<&Rule>, channel: Value) -> bool {
        let caller = self.conn.caller();
        match rule {
            _ if caller.is_privileged() => true,
            None => true,
            Some(rule) => {
                rule.evaluate(&Vars {
                    channel: Some(channel),
                    ..Vars::for_caller(&caller)
                })
                .allow
            }
        }
    }

    async fn join(&mut self, channel: &str, presence: Value) -> Result<(), Fail> {
        check_channel_name(channel)?;
        if presence.to_string().len() > channels::MAX_PRESENCE {
            return Err(Fail(
                "payload_too_large",
                format!(
                    "presence is at most {} bytes of JSON",
                    channels::MAX_PRESENCE
                ),
            ));
        }
        if !self.channels.contains(channel) && self.channels.len() >= self.rt.config.max_channels {
            return Err(Fail(
                "too_many_channels",
                format!(
                    "a connection joins at most {} channels",
                    self.rt.config.max_channels
                ),
            ));
        }
        let allowed = self.channel_rule_allows(
            self.rt.join_rule.as_ref(),
            json!({"name": channel, "presence": presence}),
        );
        if !allowed {
            return Err(Fail(
                "forbidden",
                "the channel's join rule denied this".into(),
            ));
        }
        let caller = self.conn.caller();
        let member = Member {
            key: self.rt.channels.member_key(&self.conn),
            user_id: caller.user_id().map(str::to_owned),
            presence,
        };
        self.rt.channels.join(&self.conn, channel, member).await;
        self.channels.insert(channel.to_owned());
        Ok(())
    }

    async fn broadcast(&self, channel: &str, payload: Value) -> Result<(), Fail> {
        let key = self.rt.channels.member_key(&self.conn);
        let member = match self.channels.contains(channel) {
            true => self.rt.channels.member(channel, &key),
            false => None,
        };
        let Some(member) = member else {
            return Err(Fail(
                "not_joined",
                "join the channel before broadcasting".into(),
            ));
        };
        if payload.to_string().len() > channels::MAX_PAYLOAD {
            return Err(Fail(
                "payload_too_large",
                format!(
                    "a broadcast payload is at most {} bytes of JSON",
                    channels::MAX_PAYLOAD
                ),
            ));
        }
        let allowed = self.channel_rule_allows(
            self.rt.broadcast_rule.as_ref(),
            json!({"name": channel, "payload": payload}),
        );
        if !allowed {
            return Err(Fail(
                "forbidden",
                "the channel's broadcast rule denied this".into(),
            ));
        }
        self.rt.channels.broadcast(channel, &member, &payload).await;
        Ok(())
    }

    /// Ends the session: subscriptions stop, channel memberships leave.
    pub async fn finish(mut self) {
        for (id, spec) in self.subs.drain() {
            self.rt.hub.unregister(self.conn.id, &spec.collection, &id);
        }
        let key = self.rt.channels.member_key(&self.conn);
        for channel in self.channels.drain() {
            self.rt.channels.leave(&channel, &key).await;
        }
        self.rt.session_ended();
    }
}

fn check_channel_name(name: &str) -> Result<(), Fail> {
    if name.is_empty()
        || name.len() > channels::MAX_CHANNEL_NAME
        || name.chars().any(char::is_control)
    {
        return Err(Fail::bad(format!(
            "a channel name is 1 to {} bytes without control characters",
            channels::MAX_CHANNEL_NAME
        )));
    }
    Ok(())
}

fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn unix_now() -> i64 {
    unix_now_f64() as i64
}

/// The instant a unix time (seconds) falls at.
fn instant_at(unix: i64) -> Instant {
    let left = (unix as f64 - unix_now_f64()).max(0.0);
    Instant::now() + Duration::from_secs_f64(left)
}
