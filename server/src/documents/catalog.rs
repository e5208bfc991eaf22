//! The catalog: declared collections, cached in memory on every node.
//!
//! Changes go through the writer (DDL and the catalog row in one transaction), then every
//! node reloads: this one at once, others when Postgres `NOTIFY fb_catalog` reaches them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures_util::FutureExt;

use super::Error;
use super::collection::{Collection, CollectionName, CollectionSpec};
use crate::store::{Store, Tx};

pub struct Catalog {
    store: Store,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
}

/// What applying a declaration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Created,
    Updated,
    Unchanged,
}

impl Catalog {
    pub async fn load(store: Store) -> Result<Arc<Catalog>, Error> {
        let catalog = Arc::new(Catalog {
            store,
            collections: RwLock::new(HashMap::new()),
        });
        catalog.reload().await?;
        Ok(catalog)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Collection>> {
        self.collections.read().ok()?.get(name).cloned()
    }

    /// A collection, or `collection_not_found`.
    pub fn require(&self, name: &str) -> Result<Arc<Collection>, Error> {
        self.get(name)
            .ok_or_else(|| Error::CollectionNotFound(crate::query::shorten_for_message(name)))
    }

    pub fn list(&self) -> Vec<Arc<Collection>> {
        let mut all: Vec<Arc<Collection>> = self
            .collections
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Re-reads every collection from the database.
    pub async fn reload(&self) -> Result<(), Error> {
        let rows = self.store.list_collections().await?;
        let mut map = HashMap::with_capacity(rows.len());
        for row in rows {
            let name = row.name.clone();
            match Collection::compile(row) {
                Ok(c) => {
                    map.insert(name, Arc::new(c));
                }
                Err(e) => {
                    tracing::error!(collection.name = %name, error = %e, "cannot load collection")
                }
            }
        }
        if let Ok(mut current) = self.collections.write() {
            *current = map;
        }
        Ok(())
    }

    /// Reloads whenever another node changes the catalog; ends when the store closes.
    pub fn follow_remote(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let catalog = Arc::downgrade(self);
        let mut changes = self.store.subscribe_catalog();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(catalog) = catalog.upgrade() else {
                    return;
                };
                if let Err(e) = catalog.reload().await {
                    tracing::warn!(error = %e, "catalog reload failed");
                }
            }
        })
    }

    /// Declares a new collection.
    pub async fn create(&self, name: &str, spec: CollectionSpec) -> Result<Arc<Collection>, Error> {
        let name = CollectionName::parse(name)?;
        let indexes = spec.check()?;
        let spec_json = spec_text(&spec)?;
        let at = crate::util::time::now();
        let coll_name = name.as_str().to_owned();
        let result = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let table = tx.create_collection(&coll_name, &spec_json, &at).await?;
                    for index in &indexes {
                        tx.create_index(table, index).await?;
                    }
                    Ok::<_, crate::store::Error>(())
                }
                .boxed()
            }))
            .await;
        match result {
            Err(crate::store::Error::Conflict { .. }) => {
                return Err(Error::Conflict {
                    message: format!("collection `{}` already exists", name.as_str()),
                    details: None,
                });
            }
            other => other?,
        }
        self.changed().await?;
        self.require(name.as_str())
    }

    /// Replaces a collection's spec (indexes are added and dropped to match).
    pub async fn update(&self, name: &str, spec: CollectionSpec) -> Result<Arc<Collection>, Error> {
        let existing = self.require(name)?;
        let indexes = spec.check()?;
        let spec_json = spec_text(&spec)?;
        let at = crate::util::time::now();
        let table = existing.table;
        let result = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    tx.update_collection(table, &spec_json, &at).await?;
                    let present = tx.index_keys(table).await?;
                    for key in &present {
                        if !indexes.iter().any(|i| &i.key == key) {
                            tx.drop_index(table, key).await?;
                        }
                    }
                    for index in &indexes {
                        if !present.contains(&index.key) {
                            tx.create_index(table, index).await?;
                        }
                    }
                    Ok::<_, crate::store::Error>(())
                }
                .boxed()
            }))
            .await;
        match result {
            Err(crate::store::Error::Conflict { .. }) => {
                return Err(Error::Conflict {
                    message: "existing documents violate a new unique index".into(),
                    details: None,
                });
            }
            Err(crate::store::Error::NotFound) => {
                return Err(Error::CollectionNotFound(name.to_owned()));
            }
            other => other?,
        }
        self.changed().await?;
        self.require(name)
    }

    /// Deletes a collection and all its documents.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let existing = self.require(name)?;
        let table = existing.table;
        self.store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move { tx.drop_collection(table).await }.boxed()
            }))
            .await?;
        self.changed().await
    }

    /// Makes a collection match a declaration (from `ferrobase.toml`): creates it, updates
    /// it if it differs, or leaves it alone.
    pub async fn declare(&self, name: &str, spec: CollectionSpec) -> Result<Declared, Error> {
        match self.get(name) {
            None => {
                self.create(name, spec).await?;
                Ok(Declared::Created)
            }
            Some(existing) if existing.spec == spec => Ok(Declared::Unchanged),
            Some(_) => {
                self.update(name, spec).await?;
                Ok(Declared::Updated)
            }
        }
    }

    async fn changed(&self) -> Result<(), Error> {
        self.reload().await?;
        if let Err(e) = self.store.notify_catalog().await {
            tracing::warn!(error = %e, "could not notify other nodes of a catalog change");
        }
        Ok(())
    }
}

fn spec_text(spec: &CollectionSpec) -> Result<String, Error> {
    serde_json::to_string(spec)
        .map_err(|e| Error::Internal(format!("BUG: spec not serializable: {e}")))
}
