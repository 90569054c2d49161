//! The `Source` trait: where items come from.

use std::collections::BTreeSet;
use std::fmt::Debug;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::item::{Fields, StoredItem};

/// A source that failed to produce an item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The input could not be read or parsed at a known place (file and line, URL).
    #[error("{location}: {message}")]
    Input {
        /// Where: `file.csv:12`, a URL.
        location: String,
        /// What was wrong and how to fix it.
        message: String,
    },
    /// The store or server behind the source failed.
    #[error("failed to read `{location}`")]
    Io {
        /// Where.
        location: String,
        /// The cause.
        #[source]
        source: crate::error::BoxError,
    },
}

/// Streams items' fields. The stream must not hold the whole work list in memory, and must
/// yield the same items in the same order for the same configuration (resume relies on keys).
pub trait Source: Send + Sync + Debug {
    /// The names of the fields every item has; templates are checked against them before a run.
    fn fields(&self) -> BTreeSet<String>;

    /// The items. `context` holds the fields the source's location templates may use: none
    /// for the plan's source, the parent's under `[expand]`. An error ends the stream.
    fn items(&self, context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>>;

    /// The items after the one recorded last (`last`: its fields), for a source that can seek
    /// (an SQL keyset): a resumed load starts there instead of at the beginning. `None` (the
    /// default): the source is read again from the start, and known keys are ignored.
    fn items_after(
        &self,
        _last: &Fields,
    ) -> Option<BoxStream<'static, Result<Fields, SourceError>>> {
        None
    }

    /// A token that changes when the source's content changes (a local file's length and
    /// modification time), recorded when a load completes. A rerun that finds another token
    /// reads the source again and adds the items that are new (rows appended to a list), rather
    /// than report success while rows it has not seen exist. `None` (the default): the source
    /// cannot tell cheaply (a listing); `run --reload` reads it again.
    fn revision(&self) -> Option<String> {
        None
    }

    /// Where the first row with these field values is in the source's input (`items.csv:3`),
    /// for a source that can say by reading its input again (a local file). For error
    /// messages only. A row matches when each field given has that value. `None` (the
    /// default): the source cannot say cheaply.
    fn place_of(&self, _fields: &Fields) -> BoxFuture<'static, Option<String>> {
        Box::pin(async { None })
    }

    /// Adds the fields left out of the state because they are large (an SQL row's XML) to a
    /// page of items, just before they run. An item whose row is gone is left as it is (its
    /// steps then find the field missing). The default adds nothing.
    fn hydrate<'a>(
        &'a self,
        _items: &'a mut [StoredItem],
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async { Ok(()) })
    }
}

/// One of N disjoint parts of a job (`--shard I/N`): each worker takes the items it owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This part, `0..count`.
    pub index: u32,
    /// How many parts.
    pub count: u32,
}

impl Shard {
    /// Parses `I/N` (`0 <= I < N`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad =
            || format!("`{text}` is not a shard; write I/N with 0 <= I < N, e.g. `--shard 0/4`");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = index.trim().parse().map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// Does this shard own the item with `key`? A stable hash (FNV-1a) of the key, modulo N,
    /// for sources that cannot filter by themselves.
    pub fn owns(&self, key: &str) -> bool {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash % u64::from(self.count) == u64::from(self.index)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::Shard;

    #[test]
    fn shards_parse_and_split_keys_disjointly() {
        assert_eq!(Shard::parse("1/4"), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "1", "a/b", "0/0", "-1/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        let mut sizes = [0; 3];
        for n in 0..3000 {
            let key = format!("key-{n}");
            let owners: Vec<usize> = (0..3).filter(|&i| shards[i].owns(&key)).collect();
            assert_eq!(owners.len(), 1, "{key}");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 800), "{sizes:?}");
    }
}
