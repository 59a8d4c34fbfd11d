//! Reading JSON without building a tree: an object's members in order with their values left as
//! the text the client sent, and the checks that keep that text storable as it is. Payloads are
//! facts: no number is re-formatted, no key re-ordered, no duplicate collapsed.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The JSON type of a raw value, read from its first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `{...}`
    Object,
    /// `[...]`
    Array,
    /// `"..."`
    String,
    /// A number.
    Number,
    /// `true` or `false`.
    Bool,
    /// `null`.
    Null,
}

/// The kind of a raw value (serde_json starts a raw value at its first significant character).
pub fn kind(value: &RawValue) -> Kind {
    match value.get().as_bytes().first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b'"') => Kind::String,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') => Kind::Null,
        _ => Kind::Number,
    }
}

/// An object's members in the order sent, duplicates kept, values as raw text.
#[derive(Debug, Default)]
pub struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// Parses `text` as a JSON object. `Ok(None)`: valid JSON that is not an object.
    pub fn parse(text: &'a str) -> Result<Option<Self>, serde_json::Error> {
        let value: &RawValue = serde_json::from_str(text)?;
        Self::of(value)
    }

    /// The members of a raw value that is an object (`Ok(None)` for any other kind).
    pub fn of(value: &'a RawValue) -> Result<Option<Self>, serde_json::Error> {
        if kind(value) != Kind::Object {
            return Ok(None);
        }
        serde_json::from_str(value.get()).map(Some)
    }

    /// The value of the last member named `key` (the one most JSON readers would take).
    pub fn last(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The first name that appears more than once, if any.
    pub fn first_duplicate(&self) -> Option<&str> {
        let mut seen = std::collections::HashSet::with_capacity(self.0.len());
        self.0
            .iter()
            .find(|(k, _)| !seen.insert(k.as_ref()))
            .map(|(k, _)| k.as_ref())
    }
}

/// A member name, borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// Why raw JSON text cannot be stored as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnstorableJson {
    /// A `\uD800`–`\uDFFF` escape that is not part of a surrogate pair: valid for most JSON
    /// parsers, refused by Postgres's `json` type.
    #[error("a \\u escape is an unpaired UTF-16 surrogate")]
    LoneSurrogate,
}

/// Drops the whitespace between tokens (never inside strings) and checks every `\u` escape,
/// in one pass over `raw`, which must be valid JSON text. Borrows when there is nothing to drop.
pub fn compact(raw: &str) -> Result<Cow<'_, str>, UnstorableJson> {
    let bytes = raw.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut in_string = false;
    // A high surrogate escape was just read; the next token must be a low one.
    let mut pending_high = false;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if in_string {
            if byte == b'\\' {
                let escaped = bytes.get(i + 1).copied();
                if escaped == Some(b'u') {
                    let unit = bytes
                        .get(i + 2..i + 6)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u16::from_str_radix(h, 16).ok())
                        .unwrap_or(0);
                    match unit {
                        0xD800..=0xDBFF if pending_high => {
                            return Err(UnstorableJson::LoneSurrogate)
                        }
                        0xD800..=0xDBFF => pending_high = true,
                        0xDC00..=0xDFFF if !pending_high => {
                            return Err(UnstorableJson::LoneSurrogate)
                        }
                        _ if pending_high && !(0xDC00..=0xDFFF).contains(&unit) => {
                            return Err(UnstorableJson::LoneSurrogate)
                        }
                        _ => pending_high = false,
                    }
                    if let Some(out) = out.as_mut() {
                        out.extend_from_slice(&bytes[i..(i + 6).min(bytes.len())]);
                    }
                    i += 6;
                    continue;
                }
                if pending_high {
                    return Err(UnstorableJson::LoneSurrogate);
                }
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(&bytes[i..(i + 2).min(bytes.len())]);
                }
                i += 2;
                continue;
            }
            if pending_high {
                return Err(UnstorableJson::LoneSurrogate);
            }
            if byte == b'"' {
                in_string = false;
            }
        } else if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            out.get_or_insert_with(|| {
                let mut v = Vec::with_capacity(raw.len());
                v.extend_from_slice(&bytes[..i]);
                v
            });
            i += 1;
            continue;
        } else if byte == b'"' {
            in_string = true;
        }
        if let Some(out) = out.as_mut() {
            out.push(byte);
        }
        i += 1;
    }
    if pending_high {
        return Err(UnstorableJson::LoneSurrogate);
    }
    Ok(match out {
        None => Cow::Borrowed(raw),
        // Only ASCII whitespace between tokens was removed, so the text is still UTF-8.
        Some(bytes) => Cow::Owned(String::from_utf8(bytes).unwrap_or_else(|_| raw.to_owned())),
    })
}

/// [`compact`] into an owned raw value.
pub fn compact_owned(raw: &RawValue) -> Result<Box<RawValue>, UnstorableJson> {
    Ok(match compact(raw.get())? {
        Cow::Borrowed(_) => raw.to_owned(),
        // Removing insignificant whitespace from valid JSON leaves valid JSON.
        Cow::Owned(text) => RawValue::from_string(text).unwrap_or_else(|_| raw.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).expect("valid JSON in test")
    }

    #[test]
    fn members_keep_order_duplicates_and_exact_text() {
        let text = r#"{"b": 0.17393510096763853, "a": 18446744073709551617, "b": {"z":1,"y":2}}"#;
        let members = Members::parse(text).expect("json").expect("object");
        let names: Vec<&str> = members.0.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(names, ["b", "a", "b"]);
        assert_eq!(members.0[0].1.get(), "0.17393510096763853");
        assert_eq!(members.0[1].1.get(), "18446744073709551617");
        assert_eq!(
            members.last("b").map(RawValue::get),
            Some(r#"{"z":1,"y":2}"#)
        );
        assert_eq!(members.first_duplicate(), Some("b"));
    }

    #[test]
    fn non_objects_have_no_members() {
        assert!(Members::parse("[1]").expect("json").is_none());
        assert!(Members::parse("{").is_err());
    }

    #[test]
    fn escaped_member_names_are_decoded() {
        let members = Members::parse(r#"{"a\u0062": 1}"#)
            .expect("json")
            .expect("object");
        assert_eq!(members.0[0].0, "ab");
    }

    #[test]
    fn kinds_come_from_the_first_character() {
        assert_eq!(kind(raw(" {}")), Kind::Object);
        assert_eq!(kind(raw("[ ]")), Kind::Array);
        assert_eq!(kind(raw("\"x\"")), Kind::String);
        assert_eq!(kind(raw("-1e5")), Kind::Number);
        assert_eq!(kind(raw("false")), Kind::Bool);
        assert_eq!(kind(raw("null")), Kind::Null);
    }

    #[test]
    fn compact_drops_whitespace_between_tokens_only() {
        let text = "{ \"a b\" : [ 1 , 2.50 ] ,\n\t\"c\":\"x \\\" y\" }";
        assert_eq!(
            compact(text).expect("storable"),
            "{\"a b\":[1,2.50],\"c\":\"x \\\" y\"}"
        );
        assert!(matches!(compact("{\"a\":1}"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn compact_refuses_lone_surrogates_and_keeps_pairs() {
        assert_eq!(compact(r#""\ud800""#), Err(UnstorableJson::LoneSurrogate));
        assert_eq!(compact(r#""\udc00x""#), Err(UnstorableJson::LoneSurrogate));
        assert_eq!(
            compact(r#""\ud800\u0041""#),
            Err(UnstorableJson::LoneSurrogate)
        );
        assert_eq!(compact(r#""\ud800\n""#), Err(UnstorableJson::LoneSurrogate));
        assert_eq!(
            compact(r#""\ud83d\ude00""#).as_deref(),
            Ok(r#""\ud83d\ude00""#)
        );
        assert_eq!(compact(r#""\u0000\\u""#).as_deref(), Ok(r#""\u0000\\u""#));
    }
}
