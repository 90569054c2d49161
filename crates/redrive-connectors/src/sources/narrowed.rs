//! A source whose items are narrowed by a rule (`--shard`, `include`/`exclude`): everything
//! but the stream of items is the inner source's.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::stream::BoxStream;
use redrive_core::item::{Fields, StoredItem};
use redrive_core::source::{Source, SourceError};

/// Which of a source's items are kept.
pub trait Narrowing: Send + Sync + std::fmt::Debug {
    /// The items of `items` that are kept (errors passed on, or made for bad input).
    fn narrow(
        &self,
        items: BoxStream<'static, Result<Fields, SourceError>>,
    ) -> BoxStream<'static, Result<Fields, SourceError>>;
}

/// `inner`'s items that `rule` keeps.
#[derive(Debug)]
pub struct Narrowed<N> {
    pub(crate) inner: Arc<dyn Source>,
    pub(crate) rule: N,
}

impl<N: Narrowing> Source for Narrowed<N> {
    fn fields(&self) -> BTreeSet<String> {
        self.inner.fields()
    }

    fn items(&self, context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        self.rule.narrow(self.inner.items(context))
    }

    fn items_after(
        &self,
        last: &Fields,
    ) -> Option<BoxStream<'static, Result<Fields, SourceError>>> {
        self.inner
            .items_after(last)
            .map(|items| self.rule.narrow(items))
    }

    fn revision(&self) -> Option<String> {
        self.inner.revision()
    }

    fn place_of(&self, fields: &Fields) -> futures::future::BoxFuture<'static, Option<String>> {
        self.inner.place_of(fields)
    }

    fn hydrate<'a>(
        &'a self,
        items: &'a mut [StoredItem],
    ) -> futures::future::BoxFuture<'a, Result<(), SourceError>> {
        self.inner.hydrate(items)
    }
}
