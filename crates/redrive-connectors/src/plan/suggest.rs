//! "Did you mean": the closest allowed name to a misspelt key or value (`itmes` → `items`),
//! added to serde's "unknown field `itmes`, expected one of `items`, …".

/// The suggestion for an "unknown field/variant `X`, expected …" message, if a name is close.
pub(super) fn did_you_mean(message: &str) -> Option<String> {
    let (_, after) = message
        .split_once("unknown field `")
        .or_else(|| message.split_once("unknown variant `"))?;
    let (unknown, rest) = after.split_once('`')?;
    let (_, expected) = rest.split_once("expected")?;
    let closest = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| *name != unknown)
        .map(|name| (distance(unknown, name), name))
        .min_by_key(|(d, _)| *d)?;
    let limit = (unknown.chars().count() / 3).max(1);
    (closest.0 <= limit).then(|| format!("did you mean `{}`?", closest.1))
}

/// Edit distance (insertions, deletions, substitutions, and swaps of two neighbours).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_not() {
        let message =
            "unknown field `itmes`, expected one of `items`, `per_item`, `retries`, `lease`";
        assert_eq!(
            did_you_mean(message).as_deref(),
            Some("did you mean `items`?")
        );
        assert_eq!(
            did_you_mean("unknown variant `skp`, expected one of `skip`, `fail`, `overwrite`")
                .as_deref(),
            Some("did you mean `skip`?")
        );
        assert_eq!(
            did_you_mean("unknown field `if_exist`, expected one of `from`, `to`, `if_exists`")
                .as_deref(),
            Some("did you mean `if_exists`?")
        );
        assert_eq!(
            did_you_mean("unknown field `zzz`, expected one of `items`, `lease`"),
            None
        );
        assert_eq!(did_you_mean("missing field `to`"), None);
    }
}
