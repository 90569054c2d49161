//! What each transition does to an item's row, and how a row reads back as an item, said once
//! for both stores. A store renders a [`Change`] in its SQL dialect ([`Dialect`]), binds its
//! values in order, and records the output row against the step index the update returned.

use redrive_core::item::{Fields, ItemId, Status, StoredItem, UnknownStatus};
use redrive_core::state::Transition;
use redrive_core::step::Produced;

/// A value a change binds.
#[derive(Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Int(i64),
    Text(Option<&'a str>),
}

/// One assignment of the update.
#[derive(Debug, PartialEq)]
enum Set<'a> {
    /// `column = value`.
    To(&'static str, Value<'a>),
    /// `column = column + value`.
    Add(&'static str, Value<'a>),
    /// `column = column + 1`.
    Increment(&'static str),
    /// `column = <now>`.
    Now(&'static str),
}

/// Which step an output row belongs to, relative to the step index after the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutputOf {
    /// The step that just finished, the one before the item's new step (`Advanced`).
    Previous,
    /// The item's step (`Finished`).
    Current,
}

/// Which transition a change is: with the dialect and `returning`, it decides the update's
/// text, which is therefore written once per thread and reused (formatting it for every
/// transition was 3% of a run's CPU for items whose steps do little).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Started,
    Advanced,
    Finished,
    Released,
    Unstarted,
    Failed,
}

thread_local! {
    /// The updates written so far, by what decides their text.
    static UPDATES: std::cell::RefCell<Vec<(UpdateKey, std::rc::Rc<str>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A dialect (by its parts), a kind of change and whether it returns the step index.
type UpdateKey = (
    char,
    usize,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Kind,
    bool,
);

/// What a transition changes in its item's row.
#[derive(Debug, PartialEq)]
pub(crate) struct Change<'a> {
    pub(crate) id: ItemId,
    kind: Kind,
    sets: Vec<Set<'a>>,
    /// The output to record, if the row changed.
    pub(crate) output: Option<(&'a Produced, OutputOf)>,
    /// The item may go on running: a lease renews with it.
    pub(crate) renews: bool,
}

/// How a store writes SQL: placeholders, the clock, and what it adds to every update.
pub(crate) struct Dialect {
    /// `?` (SQLite) or `$` (PostgreSQL).
    pub(crate) marker: char,
    /// The first placeholder number free for the change's values.
    pub(crate) first: usize,
    /// The expression of the current time.
    pub(crate) now: &'static str,
    /// The condition that picks the row (and fences it).
    pub(crate) filter: &'static str,
    /// An assignment added to changes that renew the lease (empty: none).
    pub(crate) renew: &'static str,
    /// An assignment added to changes that end the lease (empty: none).
    pub(crate) free: &'static str,
}

fn bytes(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn index(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl<'a> Change<'a> {
    /// The change `transition` makes.
    pub(crate) fn of(transition: &'a Transition) -> Self {
        use Set::{Add, Increment, Now, To};
        let text = |s: &'a str| Value::Text(Some(s));
        let (id, kind, sets, output, renews) = match transition {
            Transition::Started {
                id,
                step,
                step_name,
            } => (
                *id,
                Kind::Started,
                vec![
                    To("status", text(Status::Running.as_str())),
                    To("step_index", Value::Int(index(*step))),
                    To("step", text(step_name)),
                    Increment("attempts"),
                    To("error", Value::Text(None)),
                    Now("started_at"),
                    Now("updated_at"),
                ],
                None,
                // The claim that made it runnable here set its lease a moment ago (and the
                // heartbeat renews a claimed item while it waits for a slot): leaving
                // `lease_until`, an indexed column, alone lets PostgreSQL update the row in
                // place (a HOT update, no index entries).
                false,
            ),
            Transition::Advanced {
                id,
                step,
                step_name,
                bytes: n,
                output,
            } => (
                *id,
                Kind::Advanced,
                vec![
                    To("step_index", Value::Int(index(*step))),
                    To("step", text(step_name)),
                    Add("bytes", Value::Int(bytes(*n))),
                    Now("updated_at"),
                ],
                output.as_ref().map(|o| (o, OutputOf::Previous)),
                true,
            ),
            Transition::Finished {
                id,
                status,
                bytes: n,
                reason,
                output,
            } => (
                *id,
                Kind::Finished,
                vec![
                    To("status", text(status.as_str())),
                    Add("bytes", Value::Int(bytes(*n))),
                    To("error", Value::Text(reason.as_deref())),
                    Now("updated_at"),
                    Now("finished_at"),
                ],
                output.as_ref().map(|o| (o, OutputOf::Current)),
                false,
            ),
            Transition::Released { id, error } => (
                *id,
                Kind::Released,
                vec![
                    To("status", text(Status::Pending.as_str())),
                    To("error", text(error)),
                    Now("updated_at"),
                ],
                None,
                false,
            ),
            Transition::Unstarted { id } => (
                *id,
                Kind::Unstarted,
                vec![
                    To("status", text(Status::Pending.as_str())),
                    Add("attempts", Value::Int(-1)),
                    Now("updated_at"),
                ],
                None,
                false,
            ),
            Transition::Failed { id, error } => (
                *id,
                Kind::Failed,
                vec![
                    To("status", text(Status::Failed.as_str())),
                    To("error", text(error)),
                    Now("updated_at"),
                    Now("finished_at"),
                ],
                None,
                false,
            ),
        };
        Change {
            id,
            kind,
            sets,
            output,
            renews,
        }
    }

    /// The item finishes, fails or goes back to `pending` unfinished: its lease ends with it,
    /// so that any worker may claim it at once when it is runnable again (given back, a
    /// failure retried, a `no input` skip whose input came).
    fn frees(&self) -> bool {
        !matches!(self.kind, Kind::Started | Kind::Advanced)
    }

    /// The update in `dialect` (`returning`: it returns the row's step index when it changed
    /// the row), and the values to bind after the dialect's own.
    pub(crate) fn update(
        &self,
        dialect: &Dialect,
        returning: bool,
    ) -> (std::rc::Rc<str>, Vec<&Value<'a>>) {
        let values = self.values().collect();
        let key = (
            dialect.marker,
            dialect.first,
            dialect.now,
            dialect.filter,
            dialect.renew,
            dialect.free,
            self.kind,
            returning,
        );
        let sql = UPDATES.with(|updates| {
            let mut updates = updates.borrow_mut();
            if let Some((_, sql)) = updates.iter().find(|(k, _)| *k == key) {
                return std::rc::Rc::clone(sql);
            }
            let sql: std::rc::Rc<str> = self.write_update(dialect, returning).into();
            updates.push((key, std::rc::Rc::clone(&sql)));
            sql
        });
        (sql, values)
    }

    /// The text of the update, its values numbered from the dialect's first free placeholder.
    fn write_update(&self, dialect: &Dialect, returning: bool) -> String {
        let mut next = dialect.first;
        let mut assignments: Vec<String> = Vec::with_capacity(self.sets.len() + 1);
        for set in &self.sets {
            let mut placeholder = || {
                next += 1;
                format!("{}{}", dialect.marker, next - 1)
            };
            assignments.push(match set {
                Set::To(column, _) => format!("{column} = {}", placeholder()),
                Set::Add(column, _) => format!("{column} = {column} + {}", placeholder()),
                Set::Increment(column) => format!("{column} = {column} + 1"),
                Set::Now(column) => format!("{column} = {}", dialect.now),
            });
        }
        if self.renews && !dialect.renew.is_empty() {
            assignments.push(dialect.renew.to_owned());
        }
        if self.frees() && !dialect.free.is_empty() {
            assignments.push(dialect.free.to_owned());
        }
        let mut sql = format!(
            "UPDATE items SET {} WHERE {}",
            assignments.join(", "),
            dialect.filter
        );
        if returning {
            sql.push_str(" RETURNING step_index");
        }
        sql
    }

    /// Whether `other` is the same kind of change: the same text updates both, and
    /// [`Change::update_many`] can apply them together.
    pub(crate) fn same_kind(&self, other: &Change<'_>) -> bool {
        self.kind == other.kind
    }

    /// The update of many items' changes of this change's kind in one PostgreSQL statement:
    /// `$1` the worker, `$2` the lease in seconds, `$3` the items and `$4` the epochs they
    /// were claimed with (null: not claimed, not fenced), then one array per value the change
    /// binds, in [`Change::update`]'s order, unnested side by side. Each row is fenced as
    /// [`Change::update`] fences it; it returns the ids of the rows it changed. `i.id = ANY`
    /// bounds the rows read to the group's: joined on the unnested ids alone, the planner
    /// (which knows the array's length, and table statistics that lag a table being loaded)
    /// chose a hash join over a scan of the whole table for a large group: every row of the
    /// table read for that group.
    pub(crate) fn update_many(&self) -> String {
        let mut next = 5;
        let mut columns = Vec::new();
        let mut arrays = Vec::new();
        let mut assignments: Vec<String> = Vec::with_capacity(self.sets.len() + 1);
        for set in &self.sets {
            let mut column = |value: &Value<'_>| {
                let name = format!("v{}", columns.len());
                let kind = match value {
                    Value::Int(_) => "bigint",
                    Value::Text(_) => "text",
                };
                arrays.push(format!("${next}::{kind}[]"));
                columns.push(name.clone());
                next += 1;
                name
            };
            assignments.push(match set {
                Set::To(name, value) => format!("{name} = u.{}", column(value)),
                Set::Add(name, value) => format!("{name} = i.{name} + u.{}", column(value)),
                Set::Increment(name) => format!("{name} = i.{name} + 1"),
                Set::Now(name) => format!("{name} = now()"),
            });
        }
        if self.renews {
            assignments.push(
                "lease_until = CASE WHEN u.epoch IS NULL THEN i.lease_until \
                 ELSE now() + make_interval(secs => $2) END"
                    .to_owned(),
            );
        }
        if self.frees() {
            assignments.push("lease_until = NULL".to_owned());
        }
        format!(
            "UPDATE items i SET {} FROM UNNEST($3::bigint[], $4::bigint[]{}) AS u(id, epoch{}) \
             WHERE i.id = ANY($3::bigint[]) AND i.id = u.id \
             AND (u.epoch IS NULL OR (i.lease_owner = $1 AND i.lease_epoch = u.epoch)) \
             RETURNING i.id",
            assignments.join(", "),
            arrays.iter().map(|a| format!(", {a}")).collect::<String>(),
            columns.iter().map(|c| format!(", {c}")).collect::<String>(),
        )
    }

    /// The values this change binds, in [`Change::update`]'s order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Value<'a>> {
        self.sets.iter().filter_map(|set| match set {
            Set::To(_, value) | Set::Add(_, value) => Some(value),
            Set::Increment(_) | Set::Now(_) => None,
        })
    }

    /// The step the output row is recorded against, from the step index the update returned.
    pub(crate) fn output_step(of: OutputOf, step_index: i64) -> i64 {
        match of {
            OutputOf::Previous => step_index.saturating_sub(1).max(0),
            OutputOf::Current => step_index,
        }
    }
}

/// An item row as both stores read it, before decoding.
pub(crate) struct ItemRow {
    pub(crate) id: ItemId,
    pub(crate) parent: Option<ItemId>,
    pub(crate) parent_key: Option<String>,
    pub(crate) expanded: bool,
    pub(crate) key: String,
    pub(crate) fields: String,
    pub(crate) step_index: i64,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) error: Option<String>,
    pub(crate) bytes: i64,
}

/// A row whose fields or status do not decode.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadRow {
    #[error("item {id}: its fields are not a JSON object of text: {source}")]
    Fields {
        id: ItemId,
        source: serde_json::Error,
    },
    #[error("item {id}: {message}")]
    Status { id: ItemId, message: String },
}

impl ItemRow {
    /// The item this row holds.
    pub(crate) fn decode(self) -> Result<StoredItem, BadRow> {
        let id = self.id;
        let fields: Fields =
            serde_json::from_str(&self.fields).map_err(|source| BadRow::Fields { id, source })?;
        let status: Status = self
            .status
            .parse()
            .map_err(|e: UnknownStatus| BadRow::Status {
                id,
                message: e.to_string(),
            })?;
        Ok(StoredItem {
            id,
            parent: self.parent,
            parent_key: self.parent_key,
            expanded: self.expanded,
            key: self.key,
            fields,
            step: usize::try_from(self.step_index).unwrap_or(0),
            status,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            error: self.error,
            bytes: u64::try_from(self.bytes).unwrap_or(0),
        })
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    const SQLITE_LIKE: Dialect = Dialect {
        marker: '?',
        first: 3,
        now: "?2",
        filter: "id = ?1",
        renew: "",
        free: "",
    };

    #[test]
    fn a_start_sets_status_step_attempt_and_clears_the_error() {
        let t = Transition::Started {
            id: 7,
            step: 1,
            step_name: "copy".into(),
        };
        let change = Change::of(&t);
        let (sql, values) = change.update(&SQLITE_LIKE, true);
        assert_eq!(
            &*sql,
            "UPDATE items SET status = ?3, step_index = ?4, step = ?5, attempts = attempts + 1, \
             error = ?6, started_at = ?2, updated_at = ?2 WHERE id = ?1 RETURNING step_index"
        );
        assert_eq!(
            values,
            [
                &Value::Text(Some("running")),
                &Value::Int(1),
                &Value::Text(Some("copy")),
                &Value::Text(None)
            ]
        );
        assert!(!change.renews, "a start leaves the lease its claim set");
    }

    #[test]
    fn an_advance_records_its_output_against_the_step_before() {
        let t = Transition::Advanced {
            id: 7,
            step: 2,
            step_name: "post".into(),
            bytes: 10,
            output: Some(Produced {
                path: "out/a".into(),
                bytes: 10,
            }),
        };
        let change = Change::of(&t);
        let (sql, _) = change.update(&SQLITE_LIKE, true);
        assert!(sql.contains("bytes = bytes + ?5"), "{sql}");
        assert!(
            !sql.contains("status"),
            "an advance keeps the status: {sql}"
        );
        let (_, of) = change.output.expect("an output");
        assert_eq!(Change::output_step(of, 2), 1);
    }

    fn advance_to_b() -> Transition {
        Transition::Advanced {
            id: 1,
            step: 1,
            step_name: "b".into(),
            bytes: 0,
            output: None,
        }
    }

    #[test]
    fn changes_that_renew_or_end_a_lease_take_the_dialects_lease_clauses() {
        let pg = Dialect {
            marker: '$',
            first: 5,
            now: "now()",
            filter: "id = $4",
            renew: "lease_until = now()",
            free: "lease_until = NULL",
        };
        let advance = advance_to_b();
        let fail = Transition::Failed {
            id: 1,
            error: "x".into(),
        };
        assert!(
            Change::of(&advance)
                .update(&pg, true)
                .0
                .contains("lease_until = now()")
        );
        assert!(
            !Change::of(&Transition::Started {
                id: 1,
                step: 0,
                step_name: "a".into()
            })
            .update(&pg, true)
            .0
            .contains("lease_until"),
            "a start leaves the lease its claim set"
        );
        // An item that ends or goes back to `pending` ends its lease: any worker may take it
        // when it is runnable again.
        for back in [
            Transition::Unstarted { id: 1 },
            Transition::Released {
                id: 1,
                error: "x".into(),
            },
            fail.clone(),
        ] {
            let change = Change::of(&back);
            assert!(change.update(&pg, true).0.contains("lease_until = NULL"));
            assert!(change.update_many().contains("lease_until = NULL"));
            assert!(!change.update(&SQLITE_LIKE, true).0.contains("lease_until"));
        }
    }

    #[test]
    fn many_changes_of_a_kind_are_one_fenced_update_over_arrays() {
        let start = Transition::Started {
            id: 1,
            step: 0,
            step_name: "a".into(),
        };
        let sql = Change::of(&start).update_many();
        assert_eq!(
            sql,
            "UPDATE items i SET status = u.v0, step_index = u.v1, step = u.v2, \
             attempts = i.attempts + 1, error = u.v3, started_at = now(), updated_at = now() \
             FROM UNNEST($3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::text[], $8::text[]) \
             AS u(id, epoch, v0, v1, v2, v3) \
             WHERE i.id = ANY($3::bigint[]) AND i.id = u.id \
             AND (u.epoch IS NULL OR (i.lease_owner = $1 AND i.lease_epoch = u.epoch)) \
             RETURNING i.id"
        );
        let finish = Transition::Finished {
            id: 1,
            status: Status::Done,
            bytes: 3,
            reason: None,
            output: None,
        };
        let sql = Change::of(&finish).update_many();
        assert!(sql.contains("bytes = i.bytes + u.v1"), "{sql}");
        assert!(
            !sql.contains("make_interval") && sql.contains("lease_until = NULL"),
            "a finish does not renew the lease, it ends it: {sql}"
        );
        let advance = advance_to_b();
        assert!(
            Change::of(&advance).update_many().contains(
                "lease_until = CASE WHEN u.epoch IS NULL THEN i.lease_until \
                 ELSE now() + make_interval(secs => $2) END"
            ),
            "an advance renews a claimed item's lease"
        );
        assert!(Change::of(&finish).same_kind(&Change::of(&finish)));
        assert!(!Change::of(&finish).same_kind(&Change::of(&start)));
    }

    #[test]
    fn a_row_with_bad_fields_names_its_item() {
        let row = ItemRow {
            id: 3,
            parent: None,
            parent_key: None,
            expanded: false,
            key: "k".into(),
            fields: "[1]".into(),
            step_index: 0,
            status: "pending".into(),
            attempts: 0,
            error: None,
            bytes: 0,
        };
        let error = row.decode().expect_err("not an object");
        assert!(
            error.to_string().starts_with("item 3: its fields"),
            "{error}"
        );
    }
}
