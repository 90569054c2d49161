//! Templates: `{Field}`, `{Field|filter|filter}` and `${ENV}`.
//!
//! A `{` that does not open a valid placeholder (a field name, then optional filters, then `}`)
//! is literal text, so JSON bodies such as `{"blob":"{Name}"}` need no escaping. `${NAME}` is
//! read from the environment when the plan is loaded and its value is registered as a secret.
//! `{{` is a literal `{` and `$${` a literal `${` ([`Template::escape`]), for text that would
//! otherwise read as a placeholder: a folder named `{name}` or `${HOME}`.

use std::collections::BTreeSet;
use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::item::Fields;
use crate::secrets;

/// The filters a placeholder may apply, in the order they are written.
pub const FILTERS: &[&str] = &[
    "basename", "dirname", "lower", "upper", "url", "trim", "kql", "raw",
];

/// A parsed template.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

#[derive(Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field {
        name: String,
        filters: Vec<Filter>,
    },
    /// An environment value, already read and registered as a secret.
    Secret(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    Basename,
    Dirname,
    Lower,
    Upper,
    Url,
    Trim,
    Kql,
    /// The value as it is, where values are quoted by default (`run.shell`).
    Raw,
}

/// A template that could not be parsed or rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateError {
    /// A filter name that does not exist.
    #[error("unknown filter `{filter}` in `{template}`; filters are: {}", FILTERS.join(", "))]
    UnknownFilter {
        /// The template text.
        template: String,
        /// The filter as written.
        filter: String,
    },
    /// `${NAME}` where `NAME` is not set.
    #[error(
        "environment variable `{name}` used in `{template}` is not set; export it before running"
    )]
    MissingEnv {
        /// The template text.
        template: String,
        /// The variable name.
        name: String,
    },
    /// `${` without a closing `}`.
    #[error("unclosed `${{` in `{template}`; write `${{NAME}}`")]
    UnclosedEnv {
        /// The template text.
        template: String,
    },
    /// A field's value would take a path outside where the plan points it.
    #[error(
        "`{rendered}` leaves the place `{template}` points to: a field's value adds `..` or makes the path absolute; refusing to write there (use `|basename` to keep only the name)"
    )]
    Escapes {
        /// The template text.
        template: String,
        /// The rendered path.
        rendered: String,
    },
    /// A field the item does not have (checked before the run wherever the fields are known).
    #[error("field `{field}` used in `{template}` does not exist; available fields: {available}")]
    UnknownField {
        /// The template text.
        template: String,
        /// The field name.
        field: String,
        /// Comma-separated list of the fields that exist.
        available: String,
    },
}

impl Template {
    /// Parses `raw`, reading any `${ENV}` values now.
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        Self::parse_with(raw, |name| std::env::var(name).ok())
    }

    /// `text` written so that it parses as itself: every `{` doubled, every `${` written
    /// `$${` (paths a command puts into a plan it writes, which must not read as fields or
    /// environment variables).
    pub fn escape(text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 8);
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("${") {
                out.push_str("$${");
                rest = after;
                continue;
            }
            if c == '{' {
                out.push_str("{{");
            } else {
                out.push(c);
            }
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// Parses `raw` with `env` as the environment (tests pass a closure).
    pub fn parse_with(
        raw: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = raw;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("$${") {
                literal.push_str("${");
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix("{{") {
                literal.push('{');
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix("${") {
                let Some(end) = after.find('}') else {
                    return Err(TemplateError::UnclosedEnv {
                        template: raw.to_owned(),
                    });
                };
                let name = &after[..end];
                let value = env(name).ok_or_else(|| TemplateError::MissingEnv {
                    template: raw.to_owned(),
                    name: name.to_owned(),
                })?;
                secrets::register(&value);
                flush(&mut literal, &mut parts);
                parts.push(Part::Secret(value));
                rest = &after[end + 1..];
                continue;
            }
            if c == '{'
                && let Some((name, filters, len)) = placeholder(rest)
            {
                let filters = filters
                    .iter()
                    .map(|filter| {
                        parse_filter(filter).ok_or_else(|| TemplateError::UnknownFilter {
                            template: raw.to_owned(),
                            filter: (*filter).to_owned(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                flush(&mut literal, &mut parts);
                parts.push(Part::Field {
                    name: name.to_owned(),
                    filters,
                });
                rest = &rest[len..];
                continue;
            }
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
        flush(&mut literal, &mut parts);
        Ok(Self {
            raw: raw.to_owned(),
            parts,
        })
    }

    /// The template as written (with `${ENV}` names, never their values).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The field names this template reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Field { name, .. } => Some(name.as_str()),
            _ => None,
        })
    }

    /// True when the template has no placeholder at all.
    pub fn is_constant(&self) -> bool {
        self.parts
            .iter()
            .all(|part| matches!(part, Part::Literal(_)))
    }

    /// Checks that every field this template reads is in `available`.
    pub fn check_fields(&self, available: &BTreeSet<String>) -> Result<(), TemplateError> {
        for field in self.fields() {
            if !available.contains(field) {
                return Err(TemplateError::UnknownField {
                    template: self.raw.clone(),
                    field: field.to_owned(),
                    available: join(available),
                });
            }
        }
        Ok(())
    }

    /// Renders the template with an item's fields.
    pub fn render(&self, fields: &Fields) -> Result<String, TemplateError> {
        self.render_quoted(fields, |value| value)
    }

    /// Renders the template with each field value passed through `quote` (after its filters),
    /// except those marked `|raw`: a shell command's values are quoted this way.
    pub fn render_quoted(
        &self,
        fields: &Fields,
        quote: impl Fn(String) -> String,
    ) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.raw.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(text) | Part::Secret(text) => out.push_str(text),
                Part::Field { name, filters } => {
                    let Some(value) = fields.get(name) else {
                        return Err(TemplateError::UnknownField {
                            template: self.raw.clone(),
                            field: name.clone(),
                            available: join(fields.keys()),
                        });
                    };
                    let mut value = value.clone();
                    for filter in filters {
                        value = apply(*filter, &value);
                    }
                    if !filters.contains(&Filter::Raw) {
                        value = quote(value);
                    }
                    out.push_str(&value);
                }
            }
        }
        Ok(out)
    }
}

impl Template {
    /// Renders a path or key to write to, refusing one that field values take elsewhere: more
    /// `..` components than the template's own text has, or absolute where the template is not.
    pub fn render_target(&self, fields: &Fields) -> Result<String, TemplateError> {
        let rendered = self.render(fields)?;
        let mut plain = Fields::new();
        for name in self.fields() {
            plain.insert(name.to_owned(), "x".to_owned());
        }
        let skeleton = self.render(&plain)?;
        let ups = |path: &str| path.split(['/', '\\']).filter(|part| *part == "..").count();
        let absolute = |path: &str| path.starts_with('/') && !path.contains("://");
        if ups(&rendered) > ups(&skeleton) || (absolute(&rendered) && !absolute(&skeleton)) {
            return Err(TemplateError::Escapes {
                template: self.raw.clone(),
                rendered,
            });
        }
        Ok(rendered)
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.raw)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn join<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

fn flush(literal: &mut String, parts: &mut Vec<Part>) {
    if !literal.is_empty() {
        parts.push(Part::Literal(std::mem::take(literal)));
    }
}

/// Recognises `{name}` or `{name|f1|f2}` at the start of `text`; returns the name, the filters
/// and the length consumed. Anything else is not a placeholder.
fn placeholder(text: &str) -> Option<(&str, Vec<&str>, usize)> {
    let end = text.find('}')?;
    let inner = &text[1..end];
    let mut pieces = inner.split('|');
    let name = pieces.next()?.trim();
    if !is_identifier(name) {
        return None;
    }
    let filters: Vec<&str> = pieces.map(str::trim).collect();
    if filters.iter().any(|filter| !is_identifier(filter)) {
        return None;
    }
    Some((name, filters, end + 1))
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_filter(name: &str) -> Option<Filter> {
    Some(match name {
        "basename" => Filter::Basename,
        "dirname" => Filter::Dirname,
        "lower" => Filter::Lower,
        "upper" => Filter::Upper,
        "url" => Filter::Url,
        "trim" => Filter::Trim,
        "kql" => Filter::Kql,
        "raw" => Filter::Raw,
        _ => return None,
    })
}

/// Everything but RFC 3986 unreserved characters is encoded.
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A Kusto string literal: double-quoted, with `\\`, `"` and control characters escaped.
fn kql_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn apply(filter: Filter, value: &str) -> String {
    match filter {
        Filter::Basename => value
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned(),
        Filter::Dirname => {
            let trimmed = value.trim_end_matches('/');
            match trimmed.rfind('/') {
                Some(0) => "/".to_owned(),
                Some(at) => trimmed[..at].to_owned(),
                None => String::new(),
            }
        }
        Filter::Lower => value.to_lowercase(),
        Filter::Upper => value.to_uppercase(),
        Filter::Url => utf8_percent_encode(value, URL_ENCODE).to_string(),
        Filter::Trim => value.trim().to_owned(),
        Filter::Kql => kql_string(value),
        Filter::Raw => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn render(template: &str, pairs: &[(&str, &str)]) -> String {
        Template::parse_with(template, |name| {
            (name == "TOKEN").then(|| "tok-1234".to_owned())
        })
        .and_then(|t| t.render(&fields(pairs)))
        .unwrap_or_else(|e| format!("error: {e}"))
    }

    /// Whatever the text, its escape parses as that text, with no field and no secret.
    #[test]
    fn an_escaped_text_parses_as_itself() {
        for text in [
            "/data/{name}/${HOME}/a",
            "{{x}}",
            "$${A}",
            "$$",
            "a$",
            "{",
            "${",
            "${{B}",
            "{\"j\":{A}}",
            "é{ü}",
        ] {
            let template =
                Template::parse_with(&Template::escape(text), |_| Some("SECRET".to_owned()))
                    .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(template.fields().count(), 0, "{text}");
            assert_eq!(
                template
                    .render(&Fields::new())
                    .unwrap_or_else(|e| panic!("{e}")),
                text
            );
        }
    }

    macro_rules! render_cases {
        ($($name:ident: $template:expr, $fields:expr => $expected:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(render($template, $fields), $expected);
            }
        )*};
    }

    render_cases! {
        plain_field: "{Name}", &[("Name", "a.json")] => "a.json";
        two_fields: "{A}-{B}", &[("A", "1"), ("B", "2")] => "1-2";
        basename: "{p|basename}", &[("p", "x/y/z.txt")] => "z.txt";
        basename_trailing_slash: "{p|basename}", &[("p", "x/y/")] => "y";
        dirname: "{p|dirname}", &[("p", "x/y/z.txt")] => "x/y";
        dirname_root: "{p|dirname}", &[("p", "/z")] => "/";
        dirname_none: "{p|dirname}", &[("p", "z")] => "";
        lower_upper: "{a|lower}{a|upper}", &[("a", "Ab")] => "abAB";
        url_encodes_reserved: "{a|url}", &[("a", "a b/c?d=é")] => "a%20b%2Fc%3Fd%3D%C3%A9";
        chained_filters: "{p|basename|upper}", &[("p", "d/x.txt")] => "X.TXT";
        json_braces_are_literal: r#"{"blob":"{A}"}"#, &[("A", "1")] => r#"{"blob":"1"}"#;
        lone_brace_is_literal: "{ x", &[] => "{ x";
        doubled_brace_is_a_brace: "{{A}-{A}", &[("A", "1")] => "{A}-1";
        escaped_env_is_literal: "$${TOKEN}-${TOKEN}", &[] => "${TOKEN}-tok-1234";
        env_value: "Bearer ${TOKEN}", &[] => "Bearer tok-1234";
        kql_plain: "x == {a|kql}", &[("a", "wi-1")] => r#"x == "wi-1""#;
        kql_escapes_quotes_and_backslashes: "{a|kql}", &[("a", r#"a"b\c"#)] => r#""a\"b\\c""#;
        kql_escapes_newlines: "{a|kql}", &[("a", "a\nb")] => r#""a\nb""#;
        unknown_filter: "{a|nope}", &[("a", "1")] =>
            "error: unknown filter `nope` in `{a|nope}`; filters are: basename, dirname, lower, upper, url, trim, kql, raw";
        missing_env: "${NOPE}", &[] =>
            "error: environment variable `NOPE` used in `${NOPE}` is not set; export it before running";
        unclosed_env: "${NOPE", &[] => "error: unclosed `${` in `${NOPE`; write `${NAME}`";
        missing_field: "{b}", &[("a", "1")] =>
            "error: field `b` used in `{b}` does not exist; available fields: a";
    }

    #[test]
    fn targets_cannot_be_taken_elsewhere_by_field_values() {
        let target = |template: &str, value: &str| {
            Template::parse(template)
                .and_then(|t| t.render_target(&fields(&[("name", value)])))
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            target("out/{name}", "a/b.txt"),
            Ok("out/a/b.txt".to_owned())
        );
        assert!(target("out/{name}", "../../etc/x").is_err_and(|e| e.contains("adds `..`")));
        assert!(target("{name}", "/etc/passwd").is_err());
        assert_eq!(
            target("../shared/{name}", "a"),
            Ok("../shared/a".to_owned()),
            "the plan's own `..` is its choice"
        );
        assert_eq!(target("s3://b/{name}", "x/y"), Ok("s3://b/x/y".to_owned()));
        assert_eq!(
            target("out/{name|basename}", "../../x"),
            Ok("out/x".to_owned())
        );
    }

    #[test]
    fn env_values_are_registered_as_secrets() {
        let template = Template::parse_with("${T}", |_| Some("very-secret-1".to_owned()));
        assert!(template.is_ok());
        assert_eq!(secrets::redact("x very-secret-1 y"), "x *** y");
    }

    #[test]
    fn check_fields_names_the_missing_one() {
        let template = Template::parse("{a}/{c}").unwrap_or_else(|e| panic!("{e}"));
        let available: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
        assert_eq!(
            template.check_fields(&available).map_err(|e| e.to_string()),
            Err("field `c` used in `{a}/{c}` does not exist; available fields: a, b".to_owned())
        );
    }
}
