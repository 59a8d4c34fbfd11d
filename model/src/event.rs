//! The event model: expected versions, events, and the identities derived from them.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Namespace for identities derived from event ids (UUIDv5).
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_4a3e_9c2d_4e8f_a1b2_c3d4_e5f6_0718);

/// The version of an event in its stream (the first event is 0): never negative, and within the
/// store's `BIGINT`, so it converts to `i64` without loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Version(i64);

impl Version {
    /// The version of a stream's first event.
    pub const FIRST: Version = Version(0);

    /// The version as the store and the wire carry it.
    pub fn get(self) -> i64 {
        self.0
    }

    /// The version `count` events later; `None` past the store's range.
    pub fn plus(self, count: usize) -> Option<Version> {
        let count = i64::try_from(count).ok()?;
        self.0.checked_add(count).map(Version)
    }
}

/// A number that is not a version: versions are 0 or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a version: versions are 0 or more")]
pub struct NegativeVersion(pub i64);

impl TryFrom<i64> for Version {
    type Error = NegativeVersion;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if value < 0 {
            return Err(NegativeVersion(value));
        }
        Ok(Version(value))
    }
}

/// Every `u32` is a version (for literals and counts that cannot be negative).
impl From<u32> for Version {
    fn from(value: u32) -> Self {
        Version(i64::from(value))
    }
}

impl From<Version> for i64 {
    fn from(version: Version) -> Self {
        version.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a stream is: no events yet, or at the version of its last event. In JSON: `null` for
/// no stream, else the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamVersion {
    /// The stream has no events.
    NoStream,
    /// The stream's last event has this version.
    At(Version),
}

impl StreamVersion {
    /// The version the next event appended to this stream gets; `None` past the store's range.
    pub fn next(self) -> Option<Version> {
        match self {
            StreamVersion::NoStream => Some(Version::FIRST),
            StreamVersion::At(version) => version.plus(1),
        }
    }
}

impl Serialize for StreamVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StreamVersion::NoStream => serializer.serialize_none(),
            StreamVersion::At(version) => serializer.serialize_some(version),
        }
    }
}

impl<'de> Deserialize<'de> for StreamVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Option::<i64>::deserialize(deserializer)? {
            None => Ok(StreamVersion::NoStream),
            Some(n) => Version::try_from(n)
                .map(StreamVersion::At)
                .map_err(de::Error::custom),
        }
    }
}

/// The optimistic-concurrency condition of an append (the KurrentDB set). One codec for every
/// client and server: serde (a word or a number in JSON) and [`FromStr`]/[`fmt::Display`] (the
/// same words, or the number in decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's current version (that of its last event) must be exactly this.
    Exact(Version),
}

/// The modes spelled as words.
const WORD_MODES: [ExpectedVersion; 3] = [
    ExpectedVersion::Any,
    ExpectedVersion::NoStream,
    ExpectedVersion::StreamExists,
];

/// How a mode is written: a word, or the version number.
enum Spelling {
    Word(&'static str),
    Number(Version),
}

/// What an expected version may be, for error messages.
const EXPECTED_VERSION_SPELLINGS: &str =
    "\"any\", \"no_stream\", \"stream_exists\" or a non-negative integer";

impl ExpectedVersion {
    /// Whether a stream at `current` satisfies this condition.
    pub fn admits(self, current: StreamVersion) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == StreamVersion::NoStream,
            ExpectedVersion::StreamExists => current != StreamVersion::NoStream,
            ExpectedVersion::Exact(version) => current == StreamVersion::At(version),
        }
    }

    /// The one place the words are spelled.
    fn spelling(self) -> Spelling {
        match self {
            ExpectedVersion::Any => Spelling::Word("any"),
            ExpectedVersion::NoStream => Spelling::Word("no_stream"),
            ExpectedVersion::StreamExists => Spelling::Word("stream_exists"),
            ExpectedVersion::Exact(version) => Spelling::Number(version),
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        WORD_MODES
            .into_iter()
            .find(|mode| matches!(mode.spelling(), Spelling::Word(w) if w == word))
    }
}

/// Text that is not an expected version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected_version must be {EXPECTED_VERSION_SPELLINGS}, got {0}")]
pub struct ParseExpectedVersionError(pub String);

impl FromStr for ExpectedVersion {
    type Err = ParseExpectedVersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(mode) = ExpectedVersion::from_word(text) {
            return Ok(mode);
        }
        text.parse::<i64>()
            .ok()
            .and_then(|n| Version::try_from(n).ok())
            .map(ExpectedVersion::Exact)
            .ok_or_else(|| ParseExpectedVersionError(text.to_owned()))
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.spelling() {
            Spelling::Word(word) => f.write_str(word),
            Spelling::Number(version) => version.fmt(f),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.spelling() {
            Spelling::Word(word) => serializer.serialize_str(word),
            Spelling::Number(version) => serializer.serialize_i64(version.get()),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ExpectedVersionVisitor)
    }
}

/// Reads a word as its mode and a number as `Exact`; a number in a string is refused (the
/// server never accepted one).
struct ExpectedVersionVisitor;

impl de::Visitor<'_> for ExpectedVersionVisitor {
    type Value = ExpectedVersion;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED_VERSION_SPELLINGS)
    }

    fn visit_str<E: de::Error>(self, word: &str) -> Result<Self::Value, E> {
        ExpectedVersion::from_word(word)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Str(word), &self))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Version::try_from(n)
            .map(ExpectedVersion::Exact)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        i64::try_from(n)
            .ok()
            .and_then(|n| Version::try_from(n).ok())
            .map(ExpectedVersion::Exact)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(n), &self))
    }
}

/// One event of an append, validated.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Globally unique event id.
    pub id: Uuid,
    /// Event type, non-empty.
    pub event_type: String,
    /// JSON payload: the text the client sent, less whitespace between tokens.
    pub data: Box<serde_json::value::RawValue>,
    /// Optional JSON object of metadata, kept as text like `data` (correlation and causation
    /// ids live here).
    pub metadata: Option<Box<serde_json::value::RawValue>>,
    /// The metadata's `correlation_id`, when it is a string.
    pub correlation_id: Option<String>,
    /// The metadata's `causation_id`, when it is a string.
    pub causation_id: Option<String>,
}

/// A validated append: what ingest turns into one ledger row.
#[derive(Debug, Clone)]
pub struct Append {
    /// Target stream.
    pub stream_id: String,
    /// Concurrency condition.
    pub expected_version: ExpectedVersion,
    /// Idempotency key (given by the client or derived from the event ids).
    pub append_id: Uuid,
    /// Events in order; never empty.
    pub events: Vec<NewEvent>,
    /// For an append to a metadata stream (`$$<stream>`): the lifecycle change it makes.
    /// `None` for every ordinary append.
    pub lifecycle: Option<Box<crate::lifecycle::Lifecycle>>,
}

impl Append {
    /// Identifies the content of the append, to tell a retry from a reuse of its id.
    pub fn fingerprint(&self) -> Uuid {
        fingerprint(&self.stream_id, self.events.iter().map(|e| e.id))
    }

    /// The stream whose lock and partition the append shares: its own, or for a lifecycle
    /// change the stream it is about (so the change and that stream's events stay in order).
    pub fn subject(&self) -> &str {
        self.lifecycle
            .as_ref()
            .map_or(self.stream_id.as_str(), |l| l.subject.as_str())
    }
}

/// A validated multi-stream append: several streams written all or nothing, under one append
/// id (docs/design.md, "Multi-stream appends"). Every part carries the group's append id.
#[derive(Debug, Clone)]
pub struct GroupAppend {
    /// Idempotency key of the whole append (given, or derived from every part).
    pub append_id: Uuid,
    /// One append per stream, in request order; distinct streams, never empty.
    pub parts: Vec<Append>,
}

impl GroupAppend {
    /// Identifies the content of the whole append (every part's stream and event ids, in
    /// order), to tell a retry from a reuse of its id. Never equal to a single append's
    /// fingerprint: the bytes hashed start with a byte no stream id has.
    pub fn fingerprint(&self) -> Uuid {
        derived_group_append_id(
            self.parts
                .iter()
                .map(|p| (p.stream_id.as_str(), p.events.iter().map(|e| e.id))),
        )
    }

    /// How many events the parts hold together.
    pub fn event_count(&self) -> usize {
        self.parts.iter().map(|p| p.events.len()).sum()
    }

    /// The first stream in request order (what the ledger row names).
    pub fn first_stream(&self) -> &str {
        self.parts.first().map_or("", |p| p.stream_id.as_str())
    }
}

/// The append id of a multi-stream append the client gives none: UUIDv5 over every part's
/// stream and event ids in order, so re-sending the same request is idempotent.
pub fn derived_group_append_id<'a, I>(parts: impl IntoIterator<Item = (&'a str, I)>) -> Uuid
where
    I: IntoIterator<Item = Uuid>,
{
    // 0xFF never occurs in UTF-8, so no single append hashes the same bytes; each part is its
    // stream id, a NUL (never in a stream id), its event count and its event ids.
    let mut bytes = vec![0xFF];
    for (stream_id, event_ids) in parts {
        bytes.extend_from_slice(stream_id.as_bytes());
        bytes.push(0);
        let ids: Vec<Uuid> = event_ids.into_iter().collect();
        bytes.extend_from_slice(&(ids.len() as u64).to_be_bytes());
        for id in ids {
            bytes.extend_from_slice(id.as_bytes());
        }
    }
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, &bytes)
}

/// The append id used when the client gives none: UUIDv5 over the stream and event ids, so
/// that re-sending the same events is idempotent.
pub fn derived_append_id(stream_id: &str, event_ids: impl IntoIterator<Item = Uuid>) -> Uuid {
    fingerprint(stream_id, event_ids)
}

fn fingerprint(stream_id: &str, event_ids: impl IntoIterator<Item = Uuid>) -> Uuid {
    let mut bytes = Vec::with_capacity(stream_id.len() + 1 + 16 * 8);
    bytes.extend_from_slice(stream_id.as_bytes());
    bytes.push(0);
    for id in event_ids {
        bytes.extend_from_slice(id.as_bytes());
    }
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, &bytes)
}

/// The category of a stream: its id up to the first `-` (the whole id when it has none).
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

/// A 64-bit key for Postgres advisory locks on an attempt id.
pub fn advisory_key(id: Uuid) -> i64 {
    let (hi, _) = id.as_u64_pair();
    hi as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn category_is_prefix_before_first_dash() {
        assert_eq!(category_of("Order-1-2"), "Order");
        assert_eq!(category_of("Order"), "Order");
        assert_eq!(category_of("-x"), "");
    }

    fn at(version: u32) -> StreamVersion {
        StreamVersion::At(version.into())
    }

    #[test]
    fn expected_version_admits() {
        assert!(ExpectedVersion::Any.admits(StreamVersion::NoStream));
        assert!(ExpectedVersion::NoStream.admits(StreamVersion::NoStream));
        assert!(!ExpectedVersion::NoStream.admits(at(0)));
        assert!(ExpectedVersion::StreamExists.admits(at(0)));
        assert!(!ExpectedVersion::StreamExists.admits(StreamVersion::NoStream));
        assert!(ExpectedVersion::Exact(3.into()).admits(at(3)));
        assert!(!ExpectedVersion::Exact(3.into()).admits(at(4)));
    }

    #[test]
    fn expected_version_text_and_json_use_the_same_spellings() {
        let modes = [
            (ExpectedVersion::Any, "any", json!("any")),
            (ExpectedVersion::NoStream, "no_stream", json!("no_stream")),
            (
                ExpectedVersion::StreamExists,
                "stream_exists",
                json!("stream_exists"),
            ),
            (ExpectedVersion::Exact(0.into()), "0", json!(0)),
            (ExpectedVersion::Exact(7.into()), "7", json!(7)),
            (
                ExpectedVersion::Exact(Version(i64::MAX)),
                "9223372036854775807",
                json!(i64::MAX),
            ),
        ];
        for (mode, text, value) in modes {
            assert_eq!(mode.to_string(), text);
            assert_eq!(text.parse::<ExpectedVersion>(), Ok(mode));
            assert_eq!(serde_json::to_value(mode).ok(), Some(value.clone()));
            assert_eq!(
                serde_json::from_value::<ExpectedVersion>(value).ok(),
                Some(mode)
            );
        }
    }

    #[test]
    fn expected_version_refuses_what_the_server_refuses() {
        for text in [
            "-1",
            "no-stream",
            "stream-exists",
            "Any",
            "",
            "1.5",
            "later",
        ] {
            assert!(text.parse::<ExpectedVersion>().is_err(), "{text:?}");
        }
        for value in [
            json!(-1),
            json!(1.5),
            json!("7"),
            json!("no-stream"),
            json!(null),
            json!(u64::MAX),
            json!([]),
        ] {
            assert!(
                serde_json::from_value::<ExpectedVersion>(value.clone()).is_err(),
                "{value}"
            );
        }
    }

    #[test]
    fn stream_version_is_null_or_a_version_in_json() {
        assert_eq!(
            serde_json::to_value(StreamVersion::NoStream).ok(),
            Some(json!(null))
        );
        assert_eq!(serde_json::to_value(at(4)).ok(), Some(json!(4)));
        assert_eq!(
            serde_json::from_value::<StreamVersion>(json!(null)).ok(),
            Some(StreamVersion::NoStream)
        );
        assert_eq!(
            serde_json::from_value::<StreamVersion>(json!(4)).ok(),
            Some(at(4))
        );
        assert!(serde_json::from_value::<StreamVersion>(json!(-1)).is_err());
    }

    #[test]
    fn versions_are_never_negative_and_stay_in_range() {
        assert_eq!(Version::try_from(-1_i64), Err(NegativeVersion(-1)));
        assert_eq!(Version::try_from(5_i64).map(i64::from), Ok(5));
        assert_eq!(StreamVersion::NoStream.next(), Some(Version::FIRST));
        assert_eq!(at(4).next(), Some(5.into()));
        assert_eq!(StreamVersion::At(Version(i64::MAX)).next(), None);
        assert_eq!(Version::FIRST.plus(usize::MAX), None);
    }

    #[test]
    fn derived_append_id_depends_on_stream_and_ids() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(
            derived_append_id("s", [a, b]),
            derived_append_id("s", [a, b])
        );
        assert_ne!(
            derived_append_id("s", [a, b]),
            derived_append_id("s", [b, a])
        );
        assert_ne!(derived_append_id("s", [a]), derived_append_id("t", [a]));
    }

    #[test]
    fn derived_group_append_id_depends_on_every_part_and_differs_from_single_ids() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let id = |parts: &[(&str, &[Uuid])]| {
            derived_group_append_id(parts.iter().map(|(s, ids)| (*s, ids.iter().copied())))
        };
        assert_eq!(
            id(&[("s", &[a]), ("t", &[b])]),
            id(&[("s", &[a]), ("t", &[b])])
        );
        assert_ne!(
            id(&[("s", &[a]), ("t", &[b])]),
            id(&[("t", &[b]), ("s", &[a])])
        );
        assert_ne!(
            id(&[("s", &[a, b]), ("t", &[])]),
            id(&[("s", &[a]), ("t", &[b])])
        );
        assert_ne!(id(&[("s", &[a])]), derived_append_id("s", [a]));
    }
}
