//! What a token may do: `append:<pattern>`, `read:<pattern>` and `admin`, where a pattern is
//! `*` (every stream), `Category-*` (the streams of a category) or one stream id.

use std::fmt;
use std::str::FromStr;

use esk_model::event::category_of;

/// Which streams a scope covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Every stream.
    All,
    /// The streams of one category (`Order-*`).
    Category(String),
    /// One stream.
    Stream(String),
}

impl Pattern {
    /// Whether `stream_id` is covered.
    pub fn covers_stream(&self, stream_id: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Category(category) => category_of(stream_id) == category,
            Pattern::Stream(id) => id == stream_id,
        }
    }

    /// Whether every stream of `category` is covered (a single stream never covers a category).
    pub fn covers_category(&self, category: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Category(c) => c == category,
            Pattern::Stream(_) => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::All => f.write_str("*"),
            Pattern::Category(c) => write!(f, "{c}-*"),
            Pattern::Stream(s) => f.write_str(s),
        }
    }
}

/// One permission of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Append to the streams of the pattern.
    Append(Pattern),
    /// Read the streams of the pattern (`read:*` also reads `$all` and waits on positions).
    Read(Pattern),
    /// Everything, including the admin endpoints.
    Admin,
}

/// A scope that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {scope:?}: {reason} (expected append:<pattern>, read:<pattern> or admin; a pattern is *, Category-* or a stream id)")]
pub struct InvalidScope {
    /// The text given.
    pub scope: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Scope {
    /// Whether `text` is meant as an esk scope, valid or not (`admin`, or `append:`/`read:`
    /// and anything): what else a token from an identity provider carries (`openid`,
    /// `profile`, other services' scopes) is not esk's to judge.
    pub fn is_meant_as_scope(text: &str) -> bool {
        text == "admin" || text.starts_with("append:") || text.starts_with("read:")
    }
}

impl FromStr for Scope {
    type Err = InvalidScope;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidScope {
            scope: text.to_owned(),
            reason,
        };
        if text == "admin" {
            return Ok(Scope::Admin);
        }
        let (action, pattern) = text.split_once(':').ok_or_else(|| invalid("no action"))?;
        let pattern = if pattern == "*" {
            Pattern::All
        } else if let Some(category) = pattern.strip_suffix("-*") {
            if category.is_empty() || category.contains(['-', '*']) {
                return Err(invalid(
                    "a category is the part of a stream id before its first -",
                ));
            }
            Pattern::Category(category.to_owned())
        } else if pattern.is_empty() || pattern.contains('*') {
            return Err(invalid("a pattern is *, Category-* or a whole stream id"));
        } else {
            Pattern::Stream(pattern.to_owned())
        };
        match action {
            "append" => Ok(Scope::Append(pattern)),
            "read" => Ok(Scope::Read(pattern)),
            _ => Err(invalid("unknown action")),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Append(p) => write!(f, "append:{p}"),
            Scope::Read(p) => write!(f, "read:{p}"),
            Scope::Admin => f.write_str("admin"),
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Append to this stream.
    Append(&'a str),
    /// Read this stream.
    ReadStream(&'a str),
    /// Read this whole category.
    ReadCategory(&'a str),
    /// Read everything (`$all`, `/wait?position=`).
    ReadAll,
    /// An admin operation.
    Admin,
}

/// Whether `scopes` grant `need`.
pub fn allows(scopes: &[Scope], need: Need<'_>) -> bool {
    scopes.iter().any(|scope| match (scope, need) {
        (Scope::Admin, _) => true,
        (Scope::Append(p), Need::Append(stream)) => p.covers_stream(stream),
        (Scope::Read(p), Need::ReadStream(stream)) => p.covers_stream(stream),
        (Scope::Read(p), Need::ReadCategory(category)) => p.covers_category(category),
        (Scope::Read(Pattern::All), Need::ReadAll) => true,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> Vec<Scope> {
        list.iter()
            .map(|s| s.parse().expect("valid scope"))
            .collect()
    }

    #[test]
    fn scopes_round_trip_and_bad_ones_are_refused() {
        for text in [
            "admin",
            "append:*",
            "read:Order-*",
            "append:Order-1",
            "read:x",
        ] {
            let scope: Scope = text.parse().expect("valid");
            assert_eq!(scope.to_string(), text);
        }
        for bad in [
            "",
            "read",
            "write:*",
            "read:",
            "read:-*",
            "read:Or*der",
            "read:A-B-*",
            "Admin",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?} parsed");
        }
        for meant in ["admin", "append:*", "read:", "read:Or*der", "append:x"] {
            assert!(Scope::is_meant_as_scope(meant), "{meant:?}");
        }
        for other in ["openid", "profile", "Admin", "write:*", "email", ""] {
            assert!(!Scope::is_meant_as_scope(other), "{other:?}");
        }
    }

    #[test]
    fn needs_are_granted_only_by_matching_scopes() {
        let billing = scopes(&["append:Order-*", "read:Order-*"]);
        assert!(allows(&billing, Need::Append("Order-1")));
        assert!(!allows(&billing, Need::Append("Orders-1")));
        assert!(!allows(&billing, Need::Append("User-1")));
        assert!(allows(&billing, Need::ReadStream("Order-7")));
        assert!(allows(&billing, Need::ReadCategory("Order")));
        assert!(!allows(&billing, Need::ReadCategory("User")));
        assert!(!allows(&billing, Need::ReadAll));
        assert!(!allows(&billing, Need::Admin));

        let one = scopes(&["read:Order-1"]);
        assert!(allows(&one, Need::ReadStream("Order-1")));
        assert!(!allows(&one, Need::ReadStream("Order-2")));
        assert!(!allows(&one, Need::ReadCategory("Order")));
        assert!(!allows(&one, Need::Append("Order-1")));

        let reader = scopes(&["read:*"]);
        assert!(allows(&reader, Need::ReadAll));
        assert!(allows(&reader, Need::ReadCategory("User")));
        assert!(!allows(&reader, Need::Append("User-1")));

        let admin = scopes(&["admin"]);
        assert!(allows(&admin, Need::ReadAll) && allows(&admin, Need::Append("a")));
        assert!(!allows(&[], Need::ReadStream("a")));
    }
}
