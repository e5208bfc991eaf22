//! The durable side of cloud code, all in the database so any node can pick it up:
//!
//! - the job queue: async calls, after-triggers and cron runs are rows in `fb_fn_jobs`;
//!   workers lease due rows (Postgres: `FOR UPDATE SKIP LOCKED`), run them, and retry with
//!   exponential backoff until `max_attempts`, after which the row is a dead letter. A node
//!   that dies mid-run leaves a lease that expires, so the job runs again (at least once);
//! - the trigger pump: reads the change log after a shared cursor and, in one transaction,
//!   queues a job for every change some handler listens to and moves the cursor (a
//!   compare-and-swap, so two nodes never queue the same change). Over changes nobody
//!   listens to it moves on in memory and stores the cursor at most once a second, so an
//!   app without triggers does not pay a second commit per commit; after a crash those
//!   changes are looked at again, which queues nothing unless a handler for them was
//!   deployed in between. While no live version has an after-trigger or an auth trigger
//!   at all, it does not read the log: it moves to the newest committed seq;
//! - cron: each tick is claimed with a compare-and-swap on the cron's last tick, so one
//!   node runs it; after downtime only the latest missed tick runs (one catch-up); a run
//!   is not queued while the previous one is still queued or running.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::engine::Outcome;
use super::{Functions, Kind, MAX_DEPTH, Target, now_ms};
use crate::auth::{Caller, Principal, UserAuth, actor_depth};
use crate::store::functions::{JobRow, JobUpdate};
use crate::store::{ChangeRow, Tx};

const PUMP_CURSOR: &str = "trigger_cursor";
const PUMP_BATCH: u32 = 500;
/// How long the pump may look past the stored cursor over changes no handler listens to
/// before it stores its position (a change that queues a job stores it at once).
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// The trigger pump's position: the cursor as stored, and how far it has looked past it
/// over changes that queued nothing.
#[derive(Debug, Clone, Copy)]
struct PumpCursor {
    stored: i64,
    stored_at: Instant,
    seen: i64,
}

impl PumpCursor {
    fn stored(seq: i64) -> Self {
        PumpCursor {
            stored: seq,
            stored_at: Instant::now(),
            seen: seq,
        }
    }
}

/// The principal a change's `actor` names (after-triggers run as the writer). Only the
/// id survives the change log: a user's role and claims are not known here.
fn actor_principal(actor: Option<&str>) -> Principal {
    let bare = actor.map(|a| a.rsplit_once("#fn").map_or(a, |(head, _)| head));
    match bare {
        None | Some("anonymous") => Principal::Anonymous,
        Some("service") => Principal::Service,
        Some(a) if a.starts_with("admin:") => Principal::Admin {
            id: a["admin:".len()..].to_owned(),
            session_id: String::new(),
        },
        Some(id) => Principal::User(UserAuth {
            id: id.to_owned(),
            session_id: String::new(),
            role: "user".into(),
            anonymous: false,
            email: None,
            email_verified: false,
            claims: Default::default(),
        }),
    }
}

fn parse_json(text: Option<&str>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// The handler a change sets off: (kind, key). Its payload is built only when a deployed
/// version listens (`trigger_payload`): parsing every change's documents for handlers that
/// do not exist was 7 % of a create's instructions.
fn trigger_key(row: &ChangeRow) -> Option<(Kind, String)> {
    if row.collection == crate::auth::AUTH_EVENTS {
        return Some((Kind::Auth, row.op.clone()));
    }
    if let Some(bucket) = row.collection.strip_prefix("storage/") {
        return match row.op.as_str() {
            "upload" => Some((Kind::Trigger, format!("afterUpload:{bucket}"))),
            "delete" => Some((Kind::Trigger, format!("afterObjectDelete:{bucket}"))),
            _ => None,
        };
    }
    let key = match row.op.as_str() {
        "create" => "afterCreate",
        "update" => "afterUpdate",
        "delete" => "afterDelete",
        _ => return None,
    };
    Some((Kind::Trigger, format!("{key}:{}", row.collection)))
}

/// The event a handler of `trigger_key(row)` receives.
fn trigger_payload(row: &ChangeRow) -> Value {
    if row.collection == crate::auth::AUTH_EVENTS {
        let user = match parse_json(row.after.as_deref()) {
            Value::Null => json!({ "id": row.doc_id }),
            user => user,
        };
        return json!({ "op": row.op, "user": user, "seq": row.seq });
    }
    if let Some(bucket) = row.collection.strip_prefix("storage/") {
        return json!({
            "bucket": bucket, "key": row.doc_id, "op": row.op,
            "object": parse_json(row.after.as_deref()),
            "before": parse_json(row.before.as_deref()), "seq": row.seq,
        });
    }
    json!({
        "collection": row.collection, "op": row.op, "id": row.doc_id,
        "doc": parse_json(row.after.as_deref()),
        "before": parse_json(row.before.as_deref()), "seq": row.seq,
    })
}

impl Functions {
    /// Queues after-triggers for new changes.
    pub(super) async fn pump_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut commits = self.store.subscribe_commits();
        let mut cursor = None;
        loop {
            let committed = *commits.borrow_and_update();
            match self.pump_once(&mut cursor, committed).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    cursor = None;
                    tracing::warn!(error = %e, "queueing triggers failed");
                }
            }
            tokio::select! {
                _ = commits.changed() => {}
                _ = tokio::time::sleep(CURSOR_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass over the changes through `committed` (the newest committed seq); true when
    /// there may be more to do at once.
    async fn pump_once(
        &self,
        at: &mut Option<PumpCursor>,
        committed: i64,
    ) -> Result<bool, super::Error> {
        let mut cursor = match *at {
            Some(cursor) => cursor,
            None => {
                let Some(stored) = self.store.functions().get_state(PUMP_CURSOR).await? else {
                    // First start: triggers apply to changes from now on, not to history.
                    let last = self.store.last_seq().await?;
                    self.store
                        .write::<_, super::Error>(Box::new(move |tx: &mut dyn Tx| {
                            async move {
                                Ok(tx.functions().swap_state(PUMP_CURSOR, None, last).await?)
                            }
                            .boxed()
                        }))
                        .await?;
                    return Ok(true);
                };
                let cursor = PumpCursor::stored(stored);
                *at = Some(cursor);
                cursor
            }
        };
        let rows = if self.has_after() {
            self.store.changes_after(cursor.seen, PUMP_BATCH).await?
        } else {
            // No live version handles anything after a commit: every change through
            // `committed` would queue nothing, so look past them without reading them (that
            // read, documents and all, was a sixth of a create's instructions).
            cursor.seen = cursor.seen.max(committed);
            *at = Some(cursor);
            Vec::new()
        };
        let Some(last) = rows.last().map(|r| r.seq) else {
            if cursor.seen > cursor.stored && cursor.stored_at.elapsed() >= CURSOR_EVERY {
                self.move_cursor(at, cursor, cursor.seen, Vec::new())
                    .await?;
            }
            return Ok(false);
        };
        if rows.first().is_some_and(|r| r.seq > cursor.seen + 1)
            && let Some(oldest) = self.store.oldest_seq().await?
            && oldest > cursor.seen + 1
        {
            tracing::warn!(
                cursor = cursor.seen,
                oldest,
                "changes were pruned before their triggers were queued"
            );
        }
        let jobs = self.trigger_jobs(&rows);
        if jobs.is_empty() && cursor.stored_at.elapsed() < CURSOR_EVERY {
            // Nothing listens to these changes: look past them without a write of its own
            // (that would double the commits of a write-heavy app with no triggers).
            *at = Some(PumpCursor {
                seen: last,
                ..cursor
            });
            return Ok(true);
        }
        self.move_cursor(at, cursor, last, jobs).await?;
        Ok(true)
    }

    /// Whether some live version handles changes after they commit.
    fn has_after(&self) -> bool {
        // A poisoned lock reads the log as before rather than skip changes.
        self.routes.read().map(|r| r.has_after()).unwrap_or(true)
    }

    /// The jobs the current version's handlers want for these changes.
    fn trigger_jobs(&self, rows: &[ChangeRow]) -> Vec<JobRow> {
        let mut jobs = Vec::new();
        for row in rows {
            let Some((kind, key)) = trigger_key(row) else {
                continue;
            };
            let principal = actor_principal(row.actor.as_deref());
            let depth = actor_depth(row.actor.as_deref()).saturating_add(1);
            let sticky = match &principal {
                Principal::User(u) => format!("u:{}", u.id),
                _ => "anonymous".into(),
            };
            let Some(version) = self.pick(&Target::Live, &sticky) else {
                continue;
            };
            let listens = match kind {
                Kind::Auth => version.manifest.auth.contains(&key),
                _ => version.manifest.triggers.contains(&key),
            };
            if !listens {
                continue;
            }
            if depth > MAX_DEPTH {
                tracing::warn!(function.name = %key, seq = row.seq, "trigger not queued: triggers nest at most {MAX_DEPTH} deep");
                continue;
            }
            jobs.push(self.new_job(
                &key,
                kind,
                version.code.version,
                trigger_payload(row).to_string(),
                &principal,
                depth,
            ));
        }
        jobs
    }

    /// Queues `jobs` and moves the stored cursor to `to`, in one transaction; the cursor is a
    /// compare-and-swap on the stored value, so when another node moved it first nothing is
    /// queued here and the pump reads the cursor again.
    async fn move_cursor(
        &self,
        at: &mut Option<PumpCursor>,
        cursor: PumpCursor,
        to: i64,
        jobs: Vec<JobRow>,
    ) -> Result<(), super::Error> {
        let queued = !jobs.is_empty();
        let from = cursor.stored;
        let moved = self
            .store
            .write::<_, super::Error>(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    if !tx
                        .functions()
                        .swap_state(PUMP_CURSOR, Some(from), to)
                        .await?
                    {
                        return Ok(false);
                    }
                    for job in &jobs {
                        tx.functions().insert_job(job).await?;
                    }
                    Ok(true)
                }
                .boxed()
            }))
            .await?;
        *at = moved.then(|| PumpCursor::stored(to));
        if moved && queued {
            self.jobs_ready.notify_waiters();
        }
        Ok(())
    }

    /// Leases and runs due jobs.
    pub(super) async fn job_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let ready = self.jobs_ready.notified();
            match self.claim().await {
                Ok(Some(job)) => {
                    self.run_job(job).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "leasing function jobs failed"),
            }
            tokio::select! {
                _ = ready => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn claim(&self) -> Result<Option<JobRow>, super::Error> {
        if self
            .routes
            .read()
            .map(|r| r.versions.is_empty())
            .unwrap_or(true)
        {
            // Nothing deployed on this node (yet): no job could run here.
            return Ok(None);
        }
        let now = now_ms();
        if !self.store.functions().has_due(now).await? {
            return Ok(None);
        }
        let lease = self.config.async_timeout.max(self.config.timeout) + self.config.lease_grace;
        let lease_until = now + lease.as_millis() as i64;
        let at = crate::util::time::now();
        let mut jobs = self
            .store
            .write::<_, super::Error>(Box::new(move |tx: &mut dyn Tx| {
                async move { Ok(tx.functions().claim_jobs(now, lease_until, 1, &at).await?) }
                    .boxed()
            }))
            .await?;
        Ok(jobs.pop())
    }

    async fn run_job(&self, job: JobRow) {
        let outcome = match self.run_job_inner(&job).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed {
                detail: e.to_string(),
            },
        };
        let (status, result, error, run_at) = match outcome {
            Outcome::Ok(v) => ("succeeded", Some(v.to_string()), None, now_ms()),
            Outcome::Missing => (
                "dead",
                None,
                Some(format!(
                    "version {} has no handler `{}`",
                    job.version, job.function
                )),
                now_ms(),
            ),
            failure => {
                let error = match failure {
                    Outcome::Rejected { status, message } => format!("{status}: {message}"),
                    Outcome::Timeout => "function_timeout: the function ran out of time".into(),
                    _ => "function_error: the function failed (see its logs)".into(),
                };
                if job.attempts >= job.max_attempts {
                    metrics::counter!("ferrobase_function_dead_letters_total").increment(1);
                    ("dead", None, Some(error), now_ms())
                } else {
                    let shift = (job.attempts.max(1) - 1).min(16) as u32;
                    let delay = self.config.retry_backoff.saturating_mul(1 << shift);
                    (
                        "queued",
                        None,
                        Some(error),
                        now_ms() + delay.as_millis() as i64,
                    )
                }
            }
        };
        let id = job.id.clone();
        let at = crate::util::time::now();
        let result = self
            .store
            .write::<_, super::Error>(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    Ok(tx
                        .functions()
                        .finish_job(&JobUpdate {
                            id: &id,
                            status,
                            run_at,
                            result: result.as_deref(),
                            error: error.as_deref(),
                            at: &at,
                        })
                        .await?)
                }
                .boxed()
            }))
            .await;
        if let Err(e) = result {
            // The lease expires and the job runs again.
            tracing::warn!(error = %e, job = %job.id, "recording a job's outcome failed");
        }
        if status == "queued" {
            self.jobs_ready.notify_waiters();
        }
    }

    async fn run_job_inner(&self, job: &JobRow) -> Result<Outcome, super::Error> {
        let Some(kind) = Kind::parse(&job.kind) else {
            return Ok(Outcome::Missing);
        };
        let version = self.version_for(&Target::Version(job.version), "").await?;
        let caller_json = parse_json(job.caller.as_deref());
        let mut caller = Caller::internal(super::principal_from_json(&caller_json));
        caller.depth = u8::try_from(job.depth).unwrap_or(MAX_DEPTH);
        let timeout = self.timeout_for(&job.function, self.config.async_timeout);
        let payload = match serde_json::from_str(&job.payload) {
            Ok(payload) => payload,
            Err(e) => {
                return Ok(Outcome::Failed {
                    detail: format!("the job's stored payload is not JSON: {e}"),
                });
            }
        };
        self.invoke(
            &version,
            kind,
            &job.function,
            &job.function,
            payload,
            caller.clone(),
            caller.depth,
            timeout,
            &job.id,
        )
        .await
    }

    /// Fires cron handlers of the version `live` leans on most.
    pub(super) async fn cron_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut changed = self.routes_changed.subscribe();
        loop {
            let crons = self.crons();
            for (name, cron, version) in &crons {
                if let Err(e) = self.fire_due(name, cron, *version).await {
                    tracing::warn!(cron = %name, error = %e, "firing a cron job failed");
                }
            }
            let now = chrono::Utc::now();
            let next = crons
                .iter()
                .filter_map(|(_, c, _)| c.find_next_occurrence(&now, false).ok())
                .min();
            let wait = next
                .and_then(|n| (n - now).to_std().ok())
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60))
                + Duration::from_millis(5);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed.changed() => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn crons(&self) -> Vec<(String, croner::Cron, i64)> {
        let Ok(routes) = self.routes.read() else {
            return Vec::new();
        };
        let Some(version) = routes
            .aliases
            .get("live")
            .and_then(|w| w.heaviest())
            .and_then(|v| routes.versions.get(&v))
        else {
            return Vec::new();
        };
        version
            .manifest
            .crons
            .iter()
            .filter_map(|(name, expr)| {
                Some((
                    name.clone(),
                    super::routes::parse_cron(expr).ok()?,
                    version.code.version,
                ))
            })
            .collect()
    }

    /// Claims the latest tick at or before now, if no node has, and queues a run.
    async fn fire_due(
        &self,
        name: &str,
        cron: &croner::Cron,
        version: i64,
    ) -> Result<(), super::Error> {
        let now = chrono::Utc::now();
        let Ok(tick) = cron.find_previous_occurrence(&now, true) else {
            return Ok(());
        };
        let tick_ms = tick.timestamp_millis();
        let key = format!("cron:{name}");
        let last = self.store.functions().get_state(&key).await?;
        let job = match last {
            Some(l) if l >= tick_ms => return Ok(()),
            // A new cron starts with the next tick.
            None => None,
            Some(_) => Some(self.new_job(
                name,
                Kind::Cron,
                version,
                json!({ "tick": tick.to_rfc3339() }).to_string(),
                &Principal::Service,
                0,
            )),
        };
        let queued = self
            .store
            .write::<_, super::Error>(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    if !tx.functions().swap_state(&key, last, tick_ms).await? {
                        return Ok(false);
                    }
                    match &job {
                        Some(job) => Ok(tx.functions().insert_job_unless_active(job).await?),
                        None => Ok(false),
                    }
                }
                .boxed()
            }))
            .await?;
        if queued {
            self.jobs_ready.notify_waiters();
        } else if last.is_some() {
            tracing::debug!(cron = %name, "tick claimed elsewhere or the previous run is still going");
        }
        Ok(())
    }
}
