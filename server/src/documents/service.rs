//! The write pipeline and the read paths.
//!
//! Every document write — REST, batch, admin, cloud code — runs through [`Documents`]:
//!
//! 1. parse and validate the input (field names, depth, JSON Schema);
//! 2. refuse callers no rule could allow (before reading anything);
//! 3. run before-hooks, which may change the data or reject the write;
//! 4. in the writer's transaction: load the stored document, apply the update, check the
//!    rule on the current state (`doc`) and the result (`new`), write the document and
//!    append a change row. Concurrent writes share one commit (group commit);
//! 5. after the commit the writer wakes the bus; realtime and after-triggers read the log.

use std::sync::Arc;

use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Error;
use super::access::{Access, Operation};
use super::catalog::Catalog;
use super::collection::Collection;
use super::document::{Document, DocumentJson, RowFields, Saved};
use super::hooks::{BeforeEvent, Hooks};
use super::update::Update;
use super::validate::{check_size, projection, validate_data};
use crate::auth::Caller;
use crate::query::{Cursor, Filter, limits, parse_sort};
use crate::store::{DocQuery, NewChange, Store, Tx};
use crate::util::{id::new_id, time};

/// The kinds of write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Create,
    Update,
    Replace,
    Delete,
}

/// A write, validated and ready for the transaction.
enum Prepared {
    Create {
        coll: Arc<Collection>,
        doc: Document,
    },
    Update {
        coll: Arc<Collection>,
        id: String,
        update: Update,
        if_match: Option<i64>,
    },
    Replace {
        coll: Arc<Collection>,
        id: String,
        data: Map<String, Value>,
        /// Set by privileged callers only.
        owner: Option<Option<String>>,
        if_match: Option<i64>,
        upsert: bool,
    },
    Delete {
        coll: Arc<Collection>,
        id: String,
        if_match: Option<i64>,
    },
}

/// What a write did.
#[derive(Debug, Clone)]
pub enum BatchResult {
    Created(Saved),
    Updated(Saved),
    Deleted(String),
}

impl BatchResult {
    pub fn to_json(&self) -> Value {
        match self {
            BatchResult::Created(saved) | BatchResult::Updated(saved) => saved.doc.to_json(),
            BatchResult::Deleted(id) => serde_json::json!({"_id": id, "deleted": true}),
        }
    }
}

/// One operation of `POST /v1/db/batch`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOp {
    /// `create`, `update`, `replace` or `delete`.
    pub op: String,
    pub collection: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
    /// Like `If-Match`: the write applies only at this `_version`.
    #[serde(default)]
    pub if_match: Option<i64>,
    /// For `replace`: create the document when it does not exist.
    #[serde(default)]
    pub upsert: bool,
}

/// A query, from the URL (`GET`) or a body (`POST …/query`).
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub filter: Value,
    pub sort: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub offset: Option<u64>,
    pub fields: Option<String>,
    pub count: bool,
}

/// A page of results.
#[derive(Debug, Clone, utoipa::ToSchema)]
pub struct QueryPage {
    /// Documents as JSON text (see [`Document::json_text`]).
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<String>,
    pub next_cursor: Option<String>,
    /// Present when asked for.
    pub count: Option<u64>,
}

impl QueryPage {
    /// `{"items": [...], "next_cursor": ..., "count": ...}` (`count` only when counted), the
    /// documents' text copied in as it is.
    pub fn to_json(&self) -> String {
        let mut out =
            String::with_capacity(64 + self.items.iter().map(|i| i.len() + 1).sum::<usize>());
        out.push_str("{\"items\":");
        push_json_array(&mut out, &self.items);
        out.push_str(",\"next_cursor\":");
        push_json(&mut out, &self.next_cursor);
        if let Some(count) = self.count {
            out.push_str(",\"count\":");
            push_json(&mut out, &count);
        }
        out.push('}');
        out
    }

    /// The page as a JSON value (for cloud code).
    pub fn to_value(&self) -> Result<Value, Error> {
        serde_json::from_str(&self.to_json())
            .map_err(|e| Error::Internal(format!("BUG: a page is not JSON: {e}")))
    }
}

/// Appends `[a,b,…]` of JSON texts.
pub fn push_json_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
}

/// Appends `value` as JSON (strings, numbers and options of them do not fail).
pub fn push_json<T: serde::Serialize + ?Sized>(out: &mut String, value: &T) {
    if let Ok(text) = serde_json::to_string(value) {
        out.push_str(&text);
    }
}

/// A checked query, ready for the store.
struct PlannedQuery {
    filter: Filter,
    sort: Vec<crate::query::SortKey>,
    cursor: Option<Cursor>,
    offset: u64,
    limit: u32,
    fields: Option<Vec<crate::query::Field>>,
}

impl PlannedQuery {
    fn doc_query(&self, limit: u32) -> DocQuery<'_> {
        DocQuery {
            filter: &self.filter,
            sort: &self.sort,
            after: self.cursor.as_ref().map(|c| c.values.as_slice()),
            offset: self.offset,
            limit,
        }
    }
}

/// The documents service.
#[derive(Clone)]
pub struct Documents {
    store: Store,
    catalog: Arc<Catalog>,
    access: Arc<Access>,
    hooks: Arc<dyn Hooks>,
}

/// Largest batch.
pub const MAX_BATCH: usize = 500;

/// A document id a client may propose or address: 1-128 of `A-Z a-z 0-9 _ -`, starting
/// with a letter or digit.
pub fn parse_doc_id(id: &str) -> Result<String, Error> {
    let mut chars = id.chars();
    let valid = id.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        // `/v1/db/{collection}/query` is the query endpoint.
        && id != "query";
    if valid {
        Ok(id.to_owned())
    } else {
        Err(Error::BadRequest(
            "document ids are 1-128 letters, digits, `_` or `-`, starting with a letter or digit (and not `query`)".into(),
        ))
    }
}

/// A written body split apart: proposed `_id`, `_owner` (set, possibly to null, by a
/// privileged caller), and the user data.
type SplitBody = (Option<String>, Option<Option<String>>, Map<String, Value>);

/// Splits a written body into the proposed `_id`, an `_owner` (privileged callers only) and
/// the user data, refusing any other system field.
fn split_body(body: Value, caller: &Caller) -> Result<SplitBody, Error> {
    let Value::Object(mut data) = body else {
        return Err(Error::BadRequest("a document must be a JSON object".into()));
    };
    let id = match data.remove("_id") {
        None => None,
        Some(Value::String(s)) => Some(parse_doc_id(&s)?),
        Some(_) => return Err(Error::BadRequest("`_id` must be a string".into())),
    };
    let owner = match data.remove("_owner") {
        None => None,
        Some(_) if !caller.is_privileged() => {
            return Err(system_field("_owner"));
        }
        Some(Value::String(s)) => Some(Some(s)),
        Some(Value::Null) => Some(None),
        Some(_) => {
            return Err(Error::BadRequest(
                "`_owner` must be a string or null".into(),
            ));
        }
    };
    if let Some(key) = data.keys().find(|k| k.starts_with('_')) {
        return Err(system_field(key));
    }
    validate_data(&data)?;
    Ok((id, owner, data))
}

fn system_field(name: &str) -> Error {
    Error::Validation {
        message: format!(
            "`{}` is a system field; the server sets it",
            crate::query::shorten_for_message(name)
        ),
        details: None,
    }
}

impl Documents {
    pub fn new(
        store: Store,
        catalog: Arc<Catalog>,
        access: Arc<Access>,
        hooks: Arc<dyn Hooks>,
    ) -> Self {
        Self {
            store,
            catalog,
            access,
            hooks,
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    // ---- reads ----

    /// One document.
    pub async fn get(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
    ) -> Result<DocumentJson, Error> {
        let coll = self.catalog.require(collection)?;
        self.access.precheck(caller, &coll, Operation::Get)?;
        let id = parse_doc_id(id)?;
        let row = self
            .store
            .get_doc(coll.table, &id)
            .await?
            .ok_or(Error::NotFound)?;
        self.access
            .check_get(caller, &coll, &RowFields::new(&row))?;
        Ok(DocumentJson {
            version: row.version,
            json: Document::json_text(&row)?,
        })
    }

    /// A page of a query.
    pub async fn query(
        &self,
        caller: &Caller,
        collection: &str,
        req: QueryRequest,
    ) -> Result<QueryPage, Error> {
        let (coll, q) = self.plan_query(caller, collection, &req)?;
        let query = q.doc_query(q.limit + 1);
        let (items, last) = match &q.fields {
            _ if q.limit == 0 => (Vec::new(), None),
            // The common case: documents whole, their text straight from the store.
            None => {
                let mut items = self.store.query_docs_json(coll.table, &query).await?;
                let last = if items.len() > q.limit as usize {
                    items.truncate(q.limit as usize);
                    items
                        .last()
                        .map(|t| Document::from_json_str(t))
                        .transpose()?
                } else {
                    None
                };
                (items, last)
            }
            Some(fields) => {
                let mut docs = self
                    .store
                    .query_docs(coll.table, &query)
                    .await?
                    .into_iter()
                    .map(Document::from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                let last = if docs.len() > q.limit as usize {
                    docs.truncate(q.limit as usize);
                    docs.last().cloned()
                } else {
                    None
                };
                let items = docs
                    .iter()
                    .map(|doc| {
                        serde_json::to_string(&doc.project(fields))
                            .map_err(|e| Error::Internal(format!("projecting: {e}")))
                    })
                    .collect::<Result<_, _>>()?;
                (items, last)
            }
        };
        // `last` is the page's last document when more follow.
        let next_cursor = last.map(|last| Cursor::at(&q.sort, &last).encode(&q.sort));
        let count = if req.count {
            Some(self.store.count_docs(coll.table, &q.filter).await?)
        } else {
            None
        };
        Ok(QueryPage {
            items,
            next_cursor,
            count,
        })
    }

    /// The database's plan for a query (admin tool), and the declared indexes it uses.
    pub async fn explain(
        &self,
        caller: &Caller,
        collection: &str,
        req: QueryRequest,
        discourage_seqscan: bool,
    ) -> Result<(String, Vec<super::collection::IndexSpec>), Error> {
        let (coll, q) = self.plan_query(caller, collection, &req)?;
        let plan = self
            .store
            .explain(
                coll.table,
                &q.doc_query(q.limit.max(1) + 1),
                discourage_seqscan,
            )
            .await?;
        let used = plan
            .index_keys
            .iter()
            .filter_map(|key| {
                let pos = coll.indexes.iter().position(|i| &i.key == key)?;
                coll.spec.indexes.get(pos).cloned()
            })
            .collect();
        Ok((plan.text, used))
    }

    /// Parses and checks a query, and restricts it to what the caller may list.
    fn plan_query(
        &self,
        caller: &Caller,
        collection: &str,
        req: &QueryRequest,
    ) -> Result<(Arc<Collection>, PlannedQuery), Error> {
        let coll = self.catalog.require(collection)?;
        self.access.precheck(caller, &coll, Operation::List)?;
        let user_filter = Filter::parse(&req.filter).map_err(|e| Error::BadRequest(e.0))?;
        let sort = parse_sort(req.sort.as_deref()).map_err(|e| Error::BadRequest(e.0))?;
        let limit = req.limit.unwrap_or(limits::DEFAULT_LIMIT);
        if limit > limits::MAX_LIMIT {
            return Err(Error::BadRequest(format!(
                "`limit` is at most {}",
                limits::MAX_LIMIT
            )));
        }
        let offset = req.offset.unwrap_or(0);
        if offset > limits::MAX_OFFSET {
            return Err(Error::BadRequest(format!(
                "`offset` is at most {}; page with `cursor` instead",
                limits::MAX_OFFSET
            )));
        }
        let cursor = match &req.cursor {
            Some(_) if offset > 0 => {
                return Err(Error::BadRequest(
                    "use either `cursor` or `offset`, not both".into(),
                ));
            }
            Some(text) => Some(Cursor::decode(text, &sort).map_err(|e| Error::BadRequest(e.0))?),
            None => None,
        };
        let fields = req.fields.as_deref().map(projection).transpose()?;
        let filter = Filter::and(vec![self.access.list_filter(caller, &coll)?, user_filter]);
        Ok((
            coll,
            PlannedQuery {
                filter,
                sort,
                cursor,
                offset,
                limit,
                fields,
            },
        ))
    }

    // ---- writes ----

    /// Creates a document; a client may propose its `_id`.
    pub async fn create(
        &self,
        caller: &Caller,
        collection: &str,
        body: Value,
    ) -> Result<Saved, Error> {
        let coll = self.catalog.require(collection)?;
        let op = self.prepare_create(caller, coll, body).await?;
        self.run_one(caller, op).await.and_then(into_saved)
    }

    /// Applies an update (merge or operators).
    pub async fn update(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        body: Value,
        if_match: Option<i64>,
    ) -> Result<Saved, Error> {
        let coll = self.catalog.require(collection)?;
        let op = self
            .prepare_update(caller, coll, id, body, if_match)
            .await?;
        self.run_one(caller, op).await.and_then(into_saved)
    }

    /// Replaces a document's data (creating it with `upsert`); true when it was created.
    pub async fn replace(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        body: Value,
        if_match: Option<i64>,
        upsert: bool,
    ) -> Result<(Saved, bool), Error> {
        let coll = self.catalog.require(collection)?;
        let op = self
            .prepare_replace(caller, coll, id, body, if_match, upsert)
            .await?;
        match self.run_one(caller, op).await? {
            BatchResult::Created(saved) => Ok((saved, true)),
            BatchResult::Updated(saved) => Ok((saved, false)),
            BatchResult::Deleted(_) => Err(Error::Internal("BUG: replace deleted".into())),
        }
    }

    /// Deletes a document.
    pub async fn delete(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<(), Error> {
        let coll = self.catalog.require(collection)?;
        let op = self.prepare_delete(caller, coll, id, if_match).await?;
        self.run_one(caller, op).await.map(|_| ())
    }

    /// Runs up to 500 operations, all or nothing.
    pub async fn batch(
        &self,
        caller: &Caller,
        ops: Vec<BatchOp>,
    ) -> Result<Vec<BatchResult>, Error> {
        if ops.is_empty() || ops.len() > MAX_BATCH {
            return Err(Error::BadRequest(format!(
                "a batch holds 1 to {MAX_BATCH} operations"
            )));
        }
        let mut prepared = Vec::with_capacity(ops.len());
        for (index, op) in ops.into_iter().enumerate() {
            let p = self
                .prepare_batch_op(caller, op)
                .await
                .map_err(|error| Error::Batch {
                    index,
                    error: Box::new(error),
                })?;
            prepared.push(p);
        }
        let caller = caller.clone();
        let access = self.access.clone();
        self.store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let mut results = Vec::with_capacity(prepared.len());
                    for (index, op) in prepared.iter().enumerate() {
                        let result = execute(tx, op, &caller, &access).await.map_err(|error| {
                            Error::Batch {
                                index,
                                error: Box::new(error),
                            }
                        })?;
                        results.push(result);
                    }
                    Ok(results)
                }
                .boxed()
            }))
            .await
    }

    async fn prepare_batch_op(&self, caller: &Caller, op: BatchOp) -> Result<Prepared, Error> {
        let coll = self.catalog.require(&op.collection)?;
        let id = || {
            op.id
                .clone()
                .ok_or_else(|| Error::BadRequest(format!("`{}` needs an `id`", op.op)))
        };
        let data = || {
            op.data
                .clone()
                .ok_or_else(|| Error::BadRequest(format!("`{}` needs `data`", op.op)))
        };
        match op.op.as_str() {
            "create" => {
                let mut body = data()?;
                if let (Some(id), Value::Object(map)) = (&op.id, &mut body) {
                    map.insert("_id".into(), Value::String(id.clone()));
                }
                self.prepare_create(caller, coll, body).await
            }
            "update" => {
                self.prepare_update(caller, coll, &id()?, data()?, op.if_match)
                    .await
            }
            "replace" => {
                self.prepare_replace(caller, coll, &id()?, data()?, op.if_match, op.upsert)
                    .await
            }
            "delete" => self.prepare_delete(caller, coll, &id()?, op.if_match).await,
            other => Err(Error::BadRequest(format!(
                "unknown batch op `{}` (create, update, replace, delete)",
                crate::query::shorten_for_message(other)
            ))),
        }
    }

    async fn run_one(&self, caller: &Caller, op: Prepared) -> Result<BatchResult, Error> {
        let caller = caller.clone();
        let access = self.access.clone();
        self.store
            .write(Box::new(move |tx: &mut dyn Tx| {
                async move { execute(tx, &op, &caller, &access).await }.boxed()
            }))
            .await
    }

    /// Runs the before-hooks when there are any; returns the (possibly changed) data.
    async fn before(
        &self,
        caller: &Caller,
        coll: &Collection,
        kind: WriteKind,
        id: Option<&str>,
        data: Value,
    ) -> Result<Value, Error> {
        if !self.hooks.has_before(&coll.name, kind) {
            return Ok(data);
        }
        let snapshot = match (kind, id) {
            (WriteKind::Create, _) | (_, None) => None,
            (_, Some(id)) => self
                .store
                .get_doc(coll.table, id)
                .await?
                .map(Document::from_row)
                .transpose()?,
        };
        let mut event = BeforeEvent {
            collection: &coll.name,
            kind,
            id,
            auth: caller,
            data,
            doc: snapshot.as_ref(),
        };
        self.hooks.before(&mut event).await?;
        Ok(event.data)
    }

    async fn prepare_create(
        &self,
        caller: &Caller,
        coll: Arc<Collection>,
        body: Value,
    ) -> Result<Prepared, Error> {
        self.access.precheck(caller, &coll, Operation::Create)?;
        let (mut id, mut owner, mut data) = split_body(body, caller)?;
        if self.hooks.has_before(&coll.name, WriteKind::Create) {
            let mut with_id = Value::Object(data);
            if let (Some(id), Value::Object(map)) = (&id, &mut with_id) {
                map.insert("_id".into(), Value::String(id.clone()));
            }
            let changed = self
                .before(caller, &coll, WriteKind::Create, id.as_deref(), with_id)
                .await?;
            (id, owner, data) = split_body(changed, caller)
                .map(|(new_id, new_owner, data)| (new_id.or(id), new_owner.or(owner), data))?;
        }
        coll.check_schema(&mut data)?;
        let now = time::now();
        let doc = Document {
            id: id.unwrap_or_else(new_id),
            owner: owner.unwrap_or_else(|| caller.user_id().map(str::to_owned)),
            created_at: now.clone(),
            updated_at: now,
            version: 1,
            data,
        };
        Ok(Prepared::Create { coll, doc })
    }

    async fn prepare_update(
        &self,
        caller: &Caller,
        coll: Arc<Collection>,
        id: &str,
        body: Value,
        if_match: Option<i64>,
    ) -> Result<Prepared, Error> {
        self.access.precheck(caller, &coll, Operation::Update)?;
        let id = parse_doc_id(id)?;
        let update = Update::parse(body)?;
        let update = if self.hooks.has_before(&coll.name, WriteKind::Update) {
            let original = update_to_value(&update);
            Update::parse(
                self.before(caller, &coll, WriteKind::Update, Some(&id), original)
                    .await?,
            )?
        } else {
            update
        };
        Ok(Prepared::Update {
            coll,
            id,
            update,
            if_match,
        })
    }

    async fn prepare_replace(
        &self,
        caller: &Caller,
        coll: Arc<Collection>,
        id: &str,
        body: Value,
        if_match: Option<i64>,
        upsert: bool,
    ) -> Result<Prepared, Error> {
        self.access.precheck(caller, &coll, Operation::Update)?;
        let id = parse_doc_id(id)?;
        let (body_id, owner, data) = split_body(body, caller)?;
        if body_id.as_deref().is_some_and(|b| b != id) {
            return Err(Error::BadRequest(
                "`_id` in the body differs from the id in the path".into(),
            ));
        }
        let mut data = if self.hooks.has_before(&coll.name, WriteKind::Replace) {
            let changed = self
                .before(
                    caller,
                    &coll,
                    WriteKind::Replace,
                    Some(&id),
                    Value::Object(data),
                )
                .await?;
            split_body(changed, caller)?.2
        } else {
            data
        };
        coll.check_schema(&mut data)?;
        Ok(Prepared::Replace {
            coll,
            id,
            data,
            owner,
            if_match,
            upsert,
        })
    }

    async fn prepare_delete(
        &self,
        caller: &Caller,
        coll: Arc<Collection>,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<Prepared, Error> {
        self.access.precheck(caller, &coll, Operation::Delete)?;
        let id = parse_doc_id(id)?;
        self.before(caller, &coll, WriteKind::Delete, Some(&id), Value::Null)
            .await?;
        Ok(Prepared::Delete { coll, id, if_match })
    }
}

fn into_saved(result: BatchResult) -> Result<Saved, Error> {
    match result {
        BatchResult::Created(saved) | BatchResult::Updated(saved) => Ok(saved),
        BatchResult::Deleted(_) => Err(Error::Internal("BUG: a create or update deleted".into())),
    }
}

/// An update in its JSON form, for hooks.
fn update_to_value(update: &Update) -> Value {
    use super::update::{OpKind, Pull};
    match update {
        Update::Merge(map) => Value::Object(map.clone()),
        Update::Ops(ops) => {
            let mut out: Map<String, Value> = Map::new();
            for op in ops {
                let (name, arg) = match &op.kind {
                    OpKind::Set(v) => ("$set", v.clone()),
                    OpKind::Unset => ("$unset", Value::String(String::new())),
                    OpKind::Inc(n) => ("$inc", Value::Number(n.clone())),
                    OpKind::Mul(n) => ("$mul", Value::Number(n.clone())),
                    OpKind::Min(v) => ("$min", v.clone()),
                    OpKind::Max(v) => ("$max", v.clone()),
                    OpKind::Push(items) => ("$push", serde_json::json!({"$each": items})),
                    OpKind::AddToSet(items) => ("$addToSet", serde_json::json!({"$each": items})),
                    OpKind::Pull(Pull::Equal(v)) => ("$pull", v.clone()),
                    // Conditions are not shown to hooks in their parsed form; pass equality.
                    OpKind::Pull(Pull::Matching(_)) => continue,
                };
                if let Value::Object(entry) =
                    out.entry(name).or_insert_with(|| Value::Object(Map::new()))
                {
                    entry.insert(op.path.join("."), arg);
                }
            }
            Value::Object(out)
        }
    }
}

fn check_version(if_match: Option<i64>, current: Option<&Document>) -> Result<(), Error> {
    match (if_match, current) {
        (Some(wanted), Some(doc)) if wanted != doc.version => Err(Error::VersionMismatch {
            current: Some(doc.version),
        }),
        (Some(_), None) => Err(Error::VersionMismatch { current: None }),
        _ => Ok(()),
    }
}

async fn load(tx: &mut dyn Tx, coll: &Collection, id: &str) -> Result<Option<Document>, Error> {
    tx.get_doc(coll.table_ref(), id)
        .await?
        .map(Document::from_row)
        .transpose()
}

/// Step 4 of the pipeline, inside the writer's transaction.
async fn execute(
    tx: &mut dyn Tx,
    op: &Prepared,
    caller: &Caller,
    access: &Access,
) -> Result<BatchResult, Error> {
    let actor = caller.change_actor();
    match op {
        Prepared::Create { coll, doc } => {
            access.check_write(caller, coll, Operation::Create, None, Some(doc))?;
            let json = insert(tx, coll, doc, actor.as_deref()).await?;
            Ok(BatchResult::Created(Saved {
                doc: doc.clone(),
                json,
            }))
        }
        Prepared::Update {
            coll,
            id,
            update,
            if_match,
        } => {
            let current = load(tx, coll, id).await?;
            check_version(*if_match, current.as_ref())?;
            let before = current.ok_or(Error::NotFound)?;
            let mut data = update.apply(&before.data)?;
            validate_data(&data)?;
            coll.check_schema(&mut data)?;
            let after = Document {
                updated_at: time::now(),
                version: before.version + 1,
                data,
                ..before.clone()
            };
            access.check_write(caller, coll, Operation::Update, Some(&before), Some(&after))?;
            let json = overwrite(tx, coll, &before, &after, actor.as_deref()).await?;
            Ok(BatchResult::Updated(Saved { doc: after, json }))
        }
        Prepared::Replace {
            coll,
            id,
            data,
            owner,
            if_match,
            upsert,
        } => {
            let current = load(tx, coll, id).await?;
            check_version(*if_match, current.as_ref())?;
            match current {
                None if !*upsert => Err(Error::NotFound),
                None => {
                    let now = time::now();
                    let doc = Document {
                        id: id.clone(),
                        owner: owner
                            .clone()
                            .unwrap_or_else(|| caller.user_id().map(str::to_owned)),
                        created_at: now.clone(),
                        updated_at: now,
                        version: 1,
                        data: data.clone(),
                    };
                    access.check_write(caller, coll, Operation::Create, None, Some(&doc))?;
                    let json = insert(tx, coll, &doc, actor.as_deref()).await?;
                    Ok(BatchResult::Created(Saved { doc, json }))
                }
                Some(before) => {
                    let after = Document {
                        owner: owner.clone().unwrap_or_else(|| before.owner.clone()),
                        updated_at: time::now(),
                        version: before.version + 1,
                        data: data.clone(),
                        ..before.clone()
                    };
                    access.check_write(
                        caller,
                        coll,
                        Operation::Update,
                        Some(&before),
                        Some(&after),
                    )?;
                    let json = overwrite(tx, coll, &before, &after, actor.as_deref()).await?;
                    Ok(BatchResult::Updated(Saved { doc: after, json }))
                }
            }
        }
        Prepared::Delete { coll, id, if_match } => {
            let current = load(tx, coll, id).await?;
            check_version(*if_match, current.as_ref())?;
            let before = current.ok_or(Error::NotFound)?;
            access.check_write(caller, coll, Operation::Delete, Some(&before), None)?;
            let before_json = before.to_json_string();
            let change = NewChange {
                collection: &coll.name,
                doc_id: id,
                op: "delete",
                before: Some(&before_json),
                after: None,
                actor: actor.as_deref(),
                at: &time::now(),
            };
            tx.delete_doc(coll.table_ref(), id, &change).await?;
            Ok(BatchResult::Deleted(id.clone()))
        }
    }
}

/// Inserts `doc` and its change; returns its JSON text.
async fn insert(
    tx: &mut dyn Tx,
    coll: &Collection,
    doc: &Document,
    actor: Option<&str>,
) -> Result<String, Error> {
    let (row, after) = doc.to_row_and_json();
    check_size(&row.data)?;
    let change = NewChange {
        collection: &coll.name,
        doc_id: &doc.id,
        op: "create",
        before: None,
        after: Some(&after),
        actor,
        at: &doc.created_at,
    };
    tx.insert_doc(coll.table_ref(), &row, &change)
        .await
        .map_err(|e| conflict(coll, e))?;
    Ok(after)
}

/// Replaces `before` with `after` and records the change; returns `after`'s JSON text.
async fn overwrite(
    tx: &mut dyn Tx,
    coll: &Collection,
    before: &Document,
    after: &Document,
    actor: Option<&str>,
) -> Result<String, Error> {
    let (row, after_json) = after.to_row_and_json();
    check_size(&row.data)?;
    let before_json = before.to_json_string();
    let change = NewChange {
        collection: &coll.name,
        doc_id: &after.id,
        op: "update",
        before: Some(&before_json),
        after: Some(&after_json),
        actor,
        at: &after.updated_at,
    };
    tx.update_doc(coll.table_ref(), &row, &change)
        .await
        .map_err(|e| conflict(coll, e))?;
    Ok(after_json)
}

/// Names the fields of a violated unique constraint.
fn conflict(coll: &Collection, e: crate::store::Error) -> Error {
    match e {
        crate::store::Error::Conflict { constraint } => {
            let fields = coll.conflict_fields(&constraint);
            let message = if constraint == "_id" {
                "a document with this `_id` already exists".to_owned()
            } else if fields.is_empty() {
                "a unique value is already taken".to_owned()
            } else {
                format!(
                    "a document with the same {} already exists",
                    fields.join(", ")
                )
            };
            Error::Conflict {
                message,
                details: Some(serde_json::json!({ "fields": fields })),
            }
        }
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    //! The pipeline's seams, exercised with a real SQLite store.

    use super::*;
    use crate::auth::Principal;
    use crate::documents::hooks::{BeforeEvent, Hooks};
    use async_trait::async_trait;
    use serde_json::json;

    /// Upper-cases `title` on create; rejects titles equal to "reject"; refuses deletes.
    struct TestHooks;

    #[async_trait]
    impl Hooks for TestHooks {
        fn has_before(&self, collection: &str, _: WriteKind) -> bool {
            collection == "hooked"
        }
        async fn before(&self, event: &mut BeforeEvent<'_>) -> Result<(), Error> {
            if event.kind == WriteKind::Delete {
                assert!(event.doc.is_some(), "delete hooks see the stored document");
                return Err(Error::Rejected {
                    status: 409,
                    message: "keep it".into(),
                });
            }
            if event.data["title"] == "reject" {
                return Err(Error::Rejected {
                    status: 422,
                    message: "no".into(),
                });
            }
            // Creates carry the document; updates carry the update (operators).
            let target = if event.kind == WriteKind::Update {
                &mut event.data["$set"]
            } else {
                &mut event.data
            };
            if let Some(title) = target["title"].as_str() {
                target["title"] = json!(title.to_uppercase());
            }
            Ok(())
        }
    }

    async fn setup() -> (tempfile::TempDir, Store, Documents) {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::store::Options {
            database_url: None,
            data_dir: dir.path().to_owned(),
            max_connections: 2,
            group_commit: true,
            max_batch: 64,
            sqlite_synchronous: "normal".into(),
            sqlite_inline_reads: true,
            acquire_timeout: std::time::Duration::from_secs(5),
        };
        let store = Store::open(&opts).await.unwrap();
        let catalog = Catalog::load(store.clone()).await.unwrap();
        catalog.create("hooked", Default::default()).await.unwrap();
        catalog.create("plain", Default::default()).await.unwrap();
        let docs = Documents::new(
            store.clone(),
            catalog,
            Arc::new(Access),
            Arc::new(TestHooks),
        );
        (dir, store, docs)
    }

    #[tokio::test]
    async fn before_hooks_may_change_or_reject_a_write() {
        let (_dir, store, docs) = setup().await;
        let p = Caller::internal(Principal::Service);
        let created = docs
            .create(&p, "hooked", json!({"title": "milk"}))
            .await
            .unwrap()
            .doc;
        assert_eq!(created.data["title"], "MILK");
        let seq = store.last_seq().await.unwrap();
        let err = docs
            .create(&p, "hooked", json!({"title": "reject"}))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Rejected { status: 422, .. }));
        assert_eq!(
            store.last_seq().await.unwrap(),
            seq,
            "a rejected write appends no change"
        );
        let err = docs
            .delete(&p, "hooked", &created.id, None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Rejected { status: 409, .. }));
        assert!(docs.get(&p, "hooked", &created.id).await.is_ok());
        let updated = docs
            .update(
                &p,
                "hooked",
                &created.id,
                json!({"$set": {"title": "eggs"}}),
                None,
            )
            .await
            .unwrap()
            .doc;
        assert_eq!(
            updated.data["title"], "EGGS",
            "hooks see and may change updates too"
        );
        let plain = docs
            .create(&p, "plain", json!({"title": "milk"}))
            .await
            .unwrap()
            .doc;
        assert_eq!(
            plain.data["title"], "milk",
            "collections without hooks are untouched"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn the_change_log_wakes_subscribers_after_commit() {
        let (_dir, store, docs) = setup().await;
        let mut commits = store.subscribe_commits();
        let before = *commits.borrow_and_update();
        let doc = docs
            .create(
                &Caller::internal(Principal::Service),
                "plain",
                json!({"a": 1}),
            )
            .await
            .unwrap()
            .doc;
        tokio::time::timeout(std::time::Duration::from_secs(5), commits.changed())
            .await
            .unwrap()
            .unwrap();
        let seq = *commits.borrow();
        assert!(seq > before);
        let changes = store.changes_after(before, 10).await.unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].seq, seq);
        assert_eq!(changes[0].doc_id, doc.id);
        assert_eq!(changes[0].op, "create");
        store.close().await;
    }
}
