//! `--shard I/N` for sources that cannot filter by themselves: the items whose key hashes to
//! this shard ([`Shard::owns`]).

use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Shard, Source, SourceError};
use redrive_core::template::Template;
use std::sync::Arc;

use super::narrowed::{Narrowed, Narrowing};

/// A source restricted to one shard.
pub type Sharded = Narrowed<ShardOf>;

/// The items whose key (rendered with `key`) belongs to `shard`.
#[derive(Debug)]
pub struct ShardOf {
    key: Template,
    shard: Shard,
}

impl Sharded {
    /// The items of `inner` whose key (rendered with `key`) belongs to `shard`.
    pub fn new(inner: Arc<dyn Source>, key: Template, shard: Shard) -> Self {
        Narrowed {
            inner,
            rule: ShardOf { key, shard },
        }
    }
}

impl Narrowing for ShardOf {
    fn narrow(
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
