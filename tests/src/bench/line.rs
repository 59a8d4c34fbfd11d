//! One JSON line of the output: an object whose keys keep the order they were set in, printed
//! the way Python's `json.dumps` prints (`{"a": 1, "b": 2}`), as the shell script's helpers did.

use std::fmt;
use std::io;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A JSON object with its keys in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Line(Vec<(String, Value)>);

impl Line {
    /// `{"bench": name}`.
    pub(crate) fn bench(name: &str) -> Self {
        Line(vec![("bench".into(), Value::from(name))])
    }

    /// Parses a JSON object, keeping its keys' order.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("not a JSON object ({e}): {text}"))
    }

    /// Sets `key` (in place if it is there, else at the end), like a Python dict.
    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.into(), value)),
        }
        self
    }

    /// Every key of `other`, set in its order.
    pub(crate) fn extend(&mut self, other: &Line) -> &mut Self {
        for (key, value) in &other.0 {
            self.set(key, value.clone());
        }
        self
    }

    /// The value of `key`, if set.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of `key` as a number, if it is one.
    pub(crate) fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// The events a loadgen line stands for: its rate times its seconds.
    pub(crate) fn events(&self) -> i64 {
        let rate = self.number("events_per_s").unwrap_or(0.0);
        (rate * self.number("seconds").unwrap_or(0.0)).round() as i64
    }

    /// The value of `key`, or null.
    pub(crate) fn value(&self, key: &str) -> Value {
        self.get(key).cloned().unwrap_or(Value::Null)
    }

    /// The line as Python's `json.dumps` writes it.
    pub(crate) fn to_text(&self) -> String {
        let mut out = Vec::new();
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonStyle);
        match self.serialize(&mut serializer) {
            Ok(()) => String::from_utf8_lossy(&out).into_owned(),
            // Writing to a Vec fails only on non-string keys, which a Line has none of.
            Err(e) => format!("{{\"error\": \"{e}\"}}"),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl Serialize for Line {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;

        impl<'de> Visitor<'de> for Entries {
            type Value = Line;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line, A::Error> {
                let mut line = Line::default();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    line.set(&key, value);
                }
                Ok(line)
            }
        }

        deserializer.deserialize_map(Entries)
    }
}

/// `", "` between items and `": "` after keys, as Python's `json.dumps` defaults.
struct PythonStyle;

impl serde_json::ser::Formatter for PythonStyle {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// `round(n / s)` of the shell script's helpers: a rate, or None without a duration.
pub(crate) fn rate(n: f64, seconds: Option<f64>) -> Value {
    match seconds {
        Some(s) if s > 0.0 => Value::from((n / s).round_ties_even() as i64),
        _ => Value::Null,
    }
}

/// Python's `round(x, digits)` (close enough for reporting).
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round_ties_even() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_prints_like_python() -> anyhow::Result<()> {
        let mut line = Line::bench("x");
        line.extend(&Line::parse(r#"{"z": 1, "a": [1, 2.5], "bench": "y"}"#)?);
        line.set("m", Value::Null).set("z", 3);
        assert_eq!(
            line.to_text(),
            r#"{"bench": "y", "z": 3, "a": [1, 2.5], "m": null}"#
        );
        assert_eq!(line.number("z"), Some(3.0));
        assert!(Line::parse("[1]").is_err());
        Ok(())
    }

    #[test]
    fn rates_and_rounding() {
        assert_eq!(rate(10.0, Some(4.0)), Value::from(2));
        assert_eq!(rate(10.0, Some(0.0)), Value::Null);
        assert_eq!(rate(10.0, None), Value::Null);
        assert_eq!(round(1.23456, 2), 1.23);
    }
}
