//! `--shard I/N` for sources that cannot filter by themselves: the items whose key hashes to
//! this shard ([`Shard::owns`]).

use std::collections::BTreeSet;

use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::item::{Fields, StoredItem};
use redrive_core::source::{Shard, Source, SourceError};
use redrive_core::template::Template;
use std::sync::Arc;

/// A source restricted to one shard.
#[derive(Debug)]
pub struct Sharded {
    inner: Arc<dyn Source>,
    key: Template,
    shard: Shard,
}

impl Sharded {
    /// The items of `inner` whose key (rendered with `key`) belongs to `shard`.
    pub fn new(inner: Arc<dyn Source>, key: Template, shard: Shard) -> Self {
        Self { inner, key, shard }
    }

    fn filter(
        &self,
        items: BoxStream<'static, Result<Fields, SourceError>>,
    ) -> BoxStream<'static, Result<Fields, SourceError>> {
        let (key, shard) = (self.key.clone(), self.shard);
        Box::pin(items.filter(move |item| {
            // An item whose key cannot be made is passed on: the engine reports it.
            let keep = match item {
                Ok(fields) => key.render(fields).map_or(true, |k| shard.owns(&k)),
                Err(_) => true,
            };
            std::future::ready(keep)
        }))
    }
}

impl Source for Sharded {
    fn fields(&self) -> BTreeSet<String> {
        self.inner.fields()
    }

    fn items(&self, context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        self.filter(self.inner.items(context))
    }

    fn items_after(
        &self,
        last: &Fields,
    ) -> Option<BoxStream<'static, Result<Fields, SourceError>>> {
        self.inner.items_after(last).map(|items| self.filter(items))
    }

    fn revision(&self) -> Option<String> {
        self.inner.revision()
    }

    fn hydrate<'a>(
        &'a self,
        items: &'a mut [StoredItem],
    ) -> futures::future::BoxFuture<'a, Result<(), SourceError>> {
        self.inner.hydrate(items)
    }
}
