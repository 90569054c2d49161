//! Keeps one element of an XML document, byte for byte.
//!
//! The document is parsed to the end (a malformed document fails even when the element came
//! first), and the element is cut out of the original text: entities, CDATA sections, comments
//! and whitespace inside it stay exactly as they were. With `keep_ancestors`, the result is a
//! minimal document: the XML declaration, each ancestor's start tag as written (its namespace
//! declarations and attributes included), the element, and the ancestors' end tags.

use std::collections::BTreeMap;

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

/// A document that is not well-formed XML.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed XML at line {line}, column {column}: {message}")]
pub struct XmlError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The parser's message.
    pub message: String,
}

/// An open element that matches the path so far (its ancestors do too).
struct Open {
    /// Byte range of the start tag.
    tag: std::ops::Range<usize>,
    /// Byte range of the qualified name, for the end tag.
    name: std::ops::Range<usize>,
    /// Namespace declarations on this element: prefix (empty for the default) and URI.
    namespaces: Vec<(String, String)>,
}

/// The first element of `doc` at `path`: its exact text, wrapped in its ancestors when
/// `keep_ancestors`; `None` when the path matches nothing.
///
/// Only elements on the path are looked at closely (names, namespaces, attributes); the
/// others are only checked to be well-formed, which keeps a large document cheap.
pub fn extract(
    doc: &str,
    path: &XmlPath,
    keep_ancestors: bool,
) -> Result<Option<String>, XmlError> {
    let mut reader = Reader::from_str(doc);
    // The path so far: `on_path[i]` is the open element at depth i, for as long as every
    // element from the root down matches.
    let mut on_path: Vec<Open> = Vec::new();
    let mut depth = 0usize;
    let mut declaration = None;
    let mut found: Option<std::ops::Range<usize>> = None;
    let Some(last) = path.steps.len().checked_sub(1) else {
        return Ok(None);
    };
    let mut seen_root = false;
    loop {
        let before = position(reader.buffer_position());
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(error) => {
                return Err(located(
                    doc,
                    position(reader.error_position()),
                    error.to_string(),
                ));
            }
        };
        let after = position(reader.buffer_position());
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if depth == 0 && seen_root {
                    return Err(located(
                        doc,
                        before,
                        "a second root element; a document has exactly one".to_owned(),
                    ));
                }
                seen_root = true;
                let is_empty = matches!(event, Event::Empty(_));
                // Only a child of the matched path, while the element is not yet found, can
                // extend it.
                if found.is_none() && on_path.len() == depth && depth <= last {
                    let namespaces = declarations(e).map_err(|m| located(doc, before, m))?;
                    let matched = matches(&path.steps[depth], &on_path, &namespaces, e)
                        .map_err(|m| located(doc, before, m))?;
                    if matched && depth == last && is_empty {
                        found = Some(before..after);
                    } else if matched && !is_empty {
                        let name_start = before + 1;
                        on_path.push(Open {
                            tag: before..after,
                            name: name_start..name_start + e.name().as_ref().len(),
                            namespaces,
                        });
                    }
                }
                if !is_empty {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                // Once found, the ancestors stay: they wrap the result.
                if found.is_none() && on_path.len() > depth {
                    let open = on_path.pop();
                    if let Some(open) = open
                        && depth == last
                        && found.is_none()
                    {
                        found = Some(open.tag.start..after);
                    }
                }
            }
            Event::Decl(_) => declaration = Some(before..after),
            Event::Eof => break,
            _ => {}
        }
    }
    if depth > 0 {
        return Err(located(
            doc,
            doc.len(),
            format!("{depth} element(s) not closed before the end of the document"),
        ));
    }
    if !seen_root {
        return Err(located(
            doc,
            doc.len(),
            "the document has no element".to_owned(),
        ));
    }
    let Some(element) = found else {
        return Ok(None);
    };
    if !keep_ancestors {
        return Ok(Some(doc[element].to_owned()));
    }
    let mut out = String::with_capacity(element.len() + 256);
    if let Some(declaration) = declaration {
        out.push_str(&doc[declaration]);
    }
    for open in &on_path {
        out.push_str(&doc[open.tag.clone()]);
    }
    out.push_str(&doc[element]);
    for open in on_path.iter().rev() {
        out.push_str("</");
        out.push_str(&doc[open.name.clone()]);
        out.push('>');
    }
    Ok(Some(out))
}

fn position(at: u64) -> usize {
    usize::try_from(at).unwrap_or(usize::MAX)
}

/// The `xmlns` and `xmlns:p` attributes of a start tag.
fn declarations(e: &BytesStart<'_>) -> Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    for attribute in e.attributes() {
        let attribute = attribute.map_err(|e| e.to_string())?;
        let key = attribute.key.as_ref();
        let prefix = if key == "xmlns" {
            ""
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            prefix
        } else {
            continue;
        };
        let uri = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| e.to_string())?;
        found.push((prefix.to_owned(), uri.into_owned()));
    }
    Ok(found)
}

/// The URI `prefix` is bound to, on the element itself or its ancestors (`None`: unbound).
fn namespace_of<'a>(
    prefix: &str,
    own: &'a [(String, String)],
    ancestors: &'a [Open],
) -> Option<&'a str> {
    own.iter()
        .chain(
            ancestors
                .iter()
                .rev()
                .flat_map(|open| open.namespaces.iter()),
        )
        .find(|(p, _)| p == prefix)
        .map(|(_, uri)| uri.as_str())
        .filter(|uri| !uri.is_empty())
}

/// Does the element match this step of the path? Errors are malformed attributes.
fn matches(
    step: &XmlElement,
    ancestors: &[Open],
    own: &[(String, String)],
    e: &BytesStart<'_>,
) -> Result<bool, String> {
    if e.local_name().as_ref() != step.local.as_str() {
        return Ok(false);
    }
    if let Some(uri) = &step.namespace {
        let name = e.name();
        let prefix = name.as_ref().split_once(':').map_or("", |(p, _)| p);
        if namespace_of(prefix, own, ancestors) != Some(uri.as_str()) {
            return Ok(false);
        }
    }
    for (name, value) in &step.attributes {
        let mut hit = false;
        for attribute in e.attributes() {
            let attribute = attribute.map_err(|e| e.to_string())?;
            if attribute.key.local_name().as_ref() == name.as_str() {
                let actual = attribute
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|e| e.to_string())?;
                hit = actual == value.as_str();
                break;
            }
        }
        if !hit {
            return Ok(false);
        }
    }
    Ok(true)
}

fn located(doc: &str, at: usize, message: String) -> XmlError {
    let mut at = at.min(doc.len());
    while !doc.is_char_boundary(at) {
        at -= 1;
    }
    let before = &doc[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    XmlError {
        line,
        column,
        message,
    }
}

/// An absolute element path: `/a:Root/Request[@type='x']/CustData`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlPath {
    /// The path as written.
    pub text: String,
    /// One step per element, from the root.
    pub steps: Vec<XmlElement>,
}

/// One element of an [`XmlPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlElement {
    /// The namespace URI of the prefix it was written with; `None` matches any namespace.
    pub namespace: Option<String>,
    /// The local name.
    pub local: String,
    /// `[@name='value']` predicates: attribute (local name) and value, all must hold.
    pub attributes: Vec<(String, String)>,
}

/// Parses `/p:A/B[@x='1']/C` with the plan's `namespaces` (prefix → URI).
pub fn parse_xml_path(
    text: &str,
    namespaces: &BTreeMap<String, String>,
) -> Result<XmlPath, String> {
    let bad = |why: &str| {
        format!(
            "`xml.path` = `{text}`: {why}; write an absolute element path such as `/Provenir/Request/CustData` or `/p:Root/Item[@type='a']`"
        )
    };
    let Some(rest) = text.trim().strip_prefix('/') else {
        return Err(bad("it must start with `/`"));
    };
    let mut steps = Vec::new();
    for part in split_steps(rest) {
        let (name, mut predicates) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        let (namespace, local) = match name.split_once(':') {
            Some((prefix, local)) => match namespaces.get(prefix) {
                Some(uri) => (Some(uri.clone()), local),
                None => {
                    return Err(bad(&format!(
                        "the prefix `{prefix}` is not declared; add `namespaces = {{ {prefix} = \"URI\" }}`"
                    )));
                }
            },
            None => (None, name),
        };
        if local.is_empty()
            || !local
                .chars()
                .all(|c| c.is_alphanumeric() || "_-.".contains(c))
        {
            return Err(bad(&format!("`{part}` is not an element name")));
        }
        let mut attributes = Vec::new();
        while !predicates.is_empty() {
            let Some(end) = predicates.find(']') else {
                return Err(bad("a `[` is not closed"));
            };
            let inner = &predicates[1..end];
            let Some((attr, value)) = inner.strip_prefix('@').and_then(|p| p.split_once('='))
            else {
                return Err(bad(&format!(
                    "`[{inner}]` is not an attribute test `[@name='value']`"
                )));
            };
            let value = value.trim();
            let quoted = value.len() >= 2
                && ((value.starts_with('\'') && value.ends_with('\''))
                    || (value.starts_with('"') && value.ends_with('"')));
            if !quoted {
                return Err(bad(&format!("the value in `[{inner}]` must be quoted")));
            }
            let attr = attr.trim();
            let attr = attr.split_once(':').map_or(attr, |(_, local)| local);
            attributes.push((attr.to_owned(), value[1..value.len() - 1].to_owned()));
            predicates = &predicates[end + 1..];
            if !predicates.is_empty() && !predicates.starts_with('[') {
                return Err(bad(&format!("unexpected `{predicates}`")));
            }
        }
        steps.push(XmlElement {
            namespace,
            local: local.to_owned(),
            attributes,
        });
    }
    if steps.is_empty() {
        return Err(bad("it names no element"));
    }
    Ok(XmlPath {
        text: text.trim().to_owned(),
        steps,
    })
}

/// Splits at `/` outside quotes (an attribute value may contain `/`).
fn split_steps(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (at, c) in text.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if q == c => quote = None,
            (None, '/') => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {

    use super::*;

    fn path(text: &str) -> XmlPath {
        let ns = BTreeMap::from([
            ("p".to_owned(), "urn:provenir".to_owned()),
            ("q".to_owned(), "urn:other".to_owned()),
        ]);
        parse_xml_path(text, &ns).unwrap()
    }

    const DOC: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- head -->\n<Provenir xmlns=\"urn:provenir\" xmlns:x=\"urn:x\" id=\"7\">\n  <Response><CustData>not this</CustData></Response>\n  <Request type=\"full\">\n    <Other/>\n    <CustData a=\"1 &amp; 2\"><Name>A &amp; B &#169;</Name><![CDATA[<raw> & stuff]]><x:N>é</x:N>\n    </CustData>\n  </Request>\n</Provenir>\n";

    #[test]
    fn the_element_is_cut_out_byte_for_byte() {
        let got = extract(DOC, &path("/Provenir/Request/CustData"), false)
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            "<CustData a=\"1 &amp; 2\"><Name>A &amp; B &#169;</Name><![CDATA[<raw> & stuff]]><x:N>é</x:N>\n    </CustData>"
        );
    }

    #[test]
    fn ancestors_wrap_it_into_a_minimal_document() {
        let got = extract(
            DOC,
            &path("/p:Provenir/p:Request[@type='full']/p:CustData"),
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Provenir xmlns=\"urn:provenir\" xmlns:x=\"urn:x\" id=\"7\"><Request type=\"full\"><CustData a=\"1 &amp; 2\"><Name>A &amp; B &#169;</Name><![CDATA[<raw> & stuff]]><x:N>é</x:N>\n    </CustData></Request></Provenir>"
        );
        // The result is itself well-formed and holds the same element.
        let again = extract(&got, &path("/Provenir/Request/CustData"), false).unwrap();
        assert_eq!(
            again,
            extract(DOC, &path("/Provenir/Request/CustData"), false).unwrap()
        );
    }

    #[test]
    fn namespaces_predicates_and_empty_elements_decide_the_match() {
        assert_eq!(
            extract(DOC, &path("/q:Provenir/Request/CustData"), false).unwrap(),
            None
        );
        assert_eq!(
            extract(
                DOC,
                &path("/Provenir/Request[@type='brief']/CustData"),
                false
            )
            .unwrap(),
            None
        );
        assert_eq!(
            extract(DOC, &path("/Provenir/Request/Other"), true)
                .unwrap()
                .as_deref(),
            Some(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Provenir xmlns=\"urn:provenir\" xmlns:x=\"urn:x\" id=\"7\"><Request type=\"full\"><Other/></Request></Provenir>"
            )
        );
        assert_eq!(
            extract(DOC, &path("/Provenir"), false).unwrap().as_deref(),
            Some(DOC[DOC.find("<Provenir").unwrap()..DOC.rfind('>').unwrap() + 1].as_ref())
        );
        assert_eq!(
            extract(DOC, &path("/Provenir/Missing"), false).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_documents_fail_with_the_place() {
        for (doc, line, says) in [
            ("<a>\n<b></c></a>", 2, "</c>"),
            ("<a>\n<b>", 2, "not closed"),
            ("<a><b x=\"1></b></a>", 1, ""),
            ("", 1, "no element"),
            ("just text", 1, "no element"),
            ("<a/><b/>", 1, "second root"),
            ("<a>\n<CustData>ok</CustData>\n</a>\n<a>", 4, ""),
        ] {
            let error = extract(doc, &path("/a/CustData"), true).unwrap_err();
            assert_eq!(error.line, line, "{doc:?}: {error}");
            assert!(error.to_string().contains(says), "{doc:?}: {error}");
        }
    }

    #[test]
    fn paths_parse_with_prefixes_and_predicates() {
        let ns = BTreeMap::from([("p".to_owned(), "urn:p".to_owned())]);
        let path = parse_xml_path("/p:Root/Req[@type='a/b'][@n=\"2\"]/CustData", &ns).unwrap();
        assert_eq!(path.steps.len(), 3);
        assert_eq!(path.steps[0].namespace.as_deref(), Some("urn:p"));
        assert_eq!(
            path.steps[1].attributes,
            vec![("type".into(), "a/b".into()), ("n".into(), "2".into())]
        );
        assert_eq!(path.steps[2].local, "CustData");
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        let ns = BTreeMap::new();
        for (path, says) in [
            ("Root/A", "must start with `/`"),
            ("/x:Root", "prefix `x` is not declared"),
            ("/Root/A[@t=1]", "must be quoted"),
            ("/Root/A[t='1']", "not an attribute test"),
            ("/Root/A[@t='1'", "not closed"),
            ("/Root//A", "not an element name"),
            ("/", "not an element name"),
        ] {
            let error = parse_xml_path(path, &ns).unwrap_err();
            assert!(error.contains(says), "{path}: {error}");
        }
    }
}
