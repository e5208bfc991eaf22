//! Subscriptions, indexed by collection, and the tailer that feeds them from the change log.
//!
//! One task per node reads the change log in `seq` order (woken by every local commit and,
//! on Postgres, by other nodes' `NOTIFY`) and hands each change to the subscriptions on its
//! collection: a write costs one read of the log per node and, per subscription on that
//! collection, one in-memory `where` match and at most two rule evaluations — never a query
//! per subscriber.
//!
//! Ordering: `position` is the last seq dispatched. A subscription registers under the same
//! lock the tailer dispatches under, so it receives exactly the changes after the position
//! it was given. While it replays older changes (resume) or sends its snapshot, its live
//! events wait behind a gate and are released after, so events stay in seq order with no
//! gap and no duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::conn::Conn;
use super::protocol;
use crate::auth::Caller;
use crate::changes::Changes;
use crate::documents::access::Access;
use crate::documents::catalog::Catalog;
use crate::documents::collection::Collection;
use crate::documents::document::Document;
use crate::query::Filter;
use crate::store::ChangeRow;

/// A live subscription.
pub struct Sub {
    pub conn: Arc<Conn>,
    pub id: String,
    id_json: String,
    pub collection: String,
    pub filter: Filter,
    pub doc_id: Option<String>,
    /// `Some` while the connection replays or snapshots: live frames wait here.
    gate: Mutex<Option<Vec<String>>>,
    gate_limit: usize,
}

impl Sub {
    pub fn new(
        conn: Arc<Conn>,
        id: String,
        collection: String,
        filter: Filter,
        doc_id: Option<String>,
        gate_limit: usize,
    ) -> Sub {
        Sub {
            id_json: serde_json::to_string(&id).unwrap_or_default(),
            conn,
            id,
            collection,
            filter,
            doc_id,
            gate: Mutex::new(Some(Vec::new())),
            gate_limit,
        }
    }

    /// Delivers a live frame (or holds it while the gate is closed).
    fn deliver(&self, frame: String) {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        match gate.as_mut() {
            Some(held) if held.len() >= self.gate_limit => {
                drop(gate);
                self.conn.close(
                    super::conn::close::OVERFLOW,
                    "too many events arrived during the replay; resume from your last seq",
                );
            }
            Some(held) => held.push(frame),
            None => {
                drop(gate);
                self.conn.push(frame);
            }
        }
    }

    /// Opens the gate: held frames go out (in order) and later ones go straight through.
    pub async fn open_gate(&self) {
        loop {
            let held = {
                let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
                match gate.as_mut() {
                    Some(held) if held.is_empty() => {
                        *gate = None;
                        return;
                    }
                    Some(held) => std::mem::take(held),
                    None => return,
                }
            };
            for frame in held {
                if !self.conn.push_wait(frame).await {
                    return;
                }
            }
        }
    }

    /// Whether this subscription shows `doc` to its connection's caller now.
    pub fn shows(
        &self,
        access: &Access,
        caller: &Caller,
        coll: &Collection,
        doc: &Document,
    ) -> bool {
        if let Some(id) = &self.doc_id
            && *id != doc.id
        {
            return false;
        }
        // A whole-collection subscription is a live list: it shows what both a list and a
        // get would; a one-document subscription what a get would.
        self.filter.matches(doc)
            && access.check_get(caller, coll, doc).is_ok()
            && (self.doc_id.is_some() || access.listable(caller, coll, doc))
    }

    /// The frame for one change, if this subscription sees it.
    pub fn frame_for(&self, access: &Access, coll: &Collection, change: &Change) -> Option<String> {
        let caller = self.conn.caller();
        let was = change
            .before
            .as_ref()
            .is_some_and(|(d, _)| self.shows(access, &caller, coll, d));
        let is = change
            .after
            .as_ref()
            .is_some_and(|(d, _)| self.shows(access, &caller, coll, d));
        let (op, doc) = match (change.op.as_str(), was, is) {
            (_, false, false) => return None,
            ("create", _, true) => ("create", after_text(change)?),
            ("delete", true, _) => ("delete", before_text(change)?),
            ("update", true, true) => ("update", after_text(change)?),
            ("update", false, true) => ("enter", after_text(change)?),
            ("update", true, false) => {
                // Leaving: the new version when the caller may still read it, else only the id.
                let readable = change.after.as_ref().is_some_and(|(d, _)| {
                    self.doc_id.as_ref().is_none_or(|id| *id == d.id)
                        && access.check_get(&caller, coll, d).is_ok()
                        && (self.doc_id.is_some() || access.listable(&caller, coll, d))
                });
                if readable {
                    ("leave", after_text(change)?)
                } else {
                    ("leave", change.id_only.as_str())
                }
            }
            _ => return None,
        };
        Some(protocol::event(&self.id_json, op, doc, change.seq))
    }
}

fn after_text(change: &Change) -> Option<&str> {
    change.after.as_ref().map(|(_, t)| t.as_str())
}

fn before_text(change: &Change) -> Option<&str> {
    change.before.as_ref().map(|(_, t)| t.as_str())
}

/// A change-log row with its documents parsed once for every subscription.
pub struct Change {
    pub seq: i64,
    pub op: String,
    pub before: Option<(Document, String)>,
    pub after: Option<(Document, String)>,
    id_only: String,
}

impl Change {
    pub fn parse(row: ChangeRow) -> Option<Change> {
        let parse = |text: Option<String>| {
            text.and_then(|t| Document::from_json_str(&t).ok().map(|d| (d, t)))
        };
        Some(Change {
            seq: row.seq,
            id_only: serde_json::json!({ "_id": row.doc_id }).to_string(),
            op: row.op,
            before: parse(row.before),
            after: parse(row.after),
        })
    }
}

type SubKey = (u64, String);

#[derive(Default)]
struct State {
    position: i64,
    by_collection: HashMap<String, HashMap<SubKey, Arc<Sub>>>,
    count: usize,
}

/// The subscription registry of one node.
pub struct Hub {
    state: Mutex<State>,
    catalog: Arc<Catalog>,
    access: Access,
}

impl Hub {
    pub fn new(catalog: Arc<Catalog>, position: i64) -> Hub {
        Hub {
            state: Mutex::new(State {
                position,
                ..State::default()
            }),
            catalog,
            access: Access,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a subscription (gate closed); returns the position it starts after.
    pub fn register(&self, sub: Arc<Sub>) -> i64 {
        let mut state = self.lock();
        let key = (sub.conn.id, sub.id.clone());
        let subs = state
            .by_collection
            .entry(sub.collection.clone())
            .or_default();
        if subs.insert(key, sub).is_none() {
            state.count += 1;
        }
        metrics::gauge!("ferrobase_realtime_subscriptions").set(state.count as f64);
        state.position
    }

    /// Removes a subscription; returns the position it stopped at (its events through
    /// this seq were dispatched).
    pub fn unregister(&self, conn: u64, collection: &str, id: &str) -> i64 {
        let mut state = self.lock();
        let mut removed = false;
        if let Some(subs) = state.by_collection.get_mut(collection) {
            removed = subs.remove(&(conn, id.to_owned())).is_some();
            if subs.is_empty() {
                state.by_collection.remove(collection);
            }
        }
        if removed {
            state.count -= 1;
        }
        metrics::gauge!("ferrobase_realtime_subscriptions").set(state.count as f64);
        state.position
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Where the tailer must read from to reach `target` (a committed seq), or `None` when
    /// there is nothing to read: it is there already, or no one subscribes, in which case it
    /// moves there without reading. A subscription registered later starts after `target`
    /// and replays anything older from the log itself, so skipping loses no event, and a
    /// server without subscribers does not read back every change it writes.
    fn unread(&self, target: i64) -> Option<i64> {
        let mut state = self.lock();
        if state.position >= target {
            return None;
        }
        if state.count == 0 {
            state.position = target;
            return None;
        }
        Some(state.position)
    }

    /// Dispatches changes in order (the tailer's job).
    fn dispatch(&self, rows: Vec<ChangeRow>) {
        let mut state = self.lock();
        for row in rows {
            let seq = row.seq;
            if seq <= state.position {
                continue;
            }
            if let Some(subs) = state.by_collection.get(&row.collection)
                && let Some(coll) = self.catalog.get(&row.collection)
                && let Some(change) = Change::parse(row)
            {
                for sub in subs.values() {
                    if let Some(frame) = sub.frame_for(&self.access, &coll, &change) {
                        sub.deliver(frame);
                    }
                }
            }
            state.position = seq;
        }
    }

    /// Follows the change log until `stop`.
    pub async fn run(self: Arc<Self>, changes: Changes, mut stop: watch::Receiver<bool>) {
        let mut commits = changes.subscribe();
        loop {
            let target = *commits.borrow_and_update();
            while let Some(from) = self.unread(target) {
                match changes.after(from, 1000).await {
                    Ok(rows) if rows.is_empty() => break,
                    Ok(rows) => {
                        let started = std::time::Instant::now();
                        self.dispatch(rows);
                        metrics::histogram!("ferrobase_realtime_dispatch_seconds")
                            .record(started.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "realtime could not read the change log; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
            tokio::select! {
                changed = commits.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }
}
