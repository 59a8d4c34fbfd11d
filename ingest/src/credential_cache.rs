//! What checking a credential found, by the credential's SHA-256, each answer trusted until its
//! own deadline: the opaque-token lookups and the JWT verifications share it, so the hot path
//! is one hash and one map lookup whichever kind a caller sends.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Instant;

use esk_runtime::tokens::TokenHash;

/// Most answers kept; beyond it stale ones are dropped (and then all, so a flood of distinct
/// credentials cannot grow memory).
pub(crate) const MAX_CACHED: usize = 10_000;

/// A bounded map from a credential's hash to an answer and the instant it stops being trusted.
#[derive(Debug)]
pub(crate) struct CredentialCache<V> {
    /// Read on every request, written once per credential per deadline.
    entries: RwLock<HashMap<TokenHash, Entry<V>>>,
}

#[derive(Debug)]
struct Entry<V> {
    until: Instant,
    value: V,
}

impl<V: Clone> CredentialCache<V> {
    /// An empty cache.
    pub(crate) fn new() -> Self {
        CredentialCache {
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// The answer for `hash`, if there is one still trusted now.
    pub(crate) fn get(&self, hash: &TokenHash) -> Option<V> {
        let entries = self.entries.read().ok()?;
        let entry = entries.get(hash)?;
        (Instant::now() < entry.until).then(|| entry.value.clone())
    }

    /// Remembers `value` for `hash` until `until` (an instant already past stores nothing).
    pub(crate) fn insert(&self, hash: TokenHash, value: V, until: Instant) {
        let now = Instant::now();
        if until <= now {
            return;
        }
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, entry| now < entry.until);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(hash, Entry { until, value });
    }

    /// Forgets every answer (the keys they were checked with changed).
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
        }
    }

    /// How many answers are held, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use esk_runtime::tokens::hash;

    use super::*;

    #[test]
    fn answers_are_trusted_until_their_deadline_only() {
        let cache = CredentialCache::new();
        let later = Instant::now() + Duration::from_secs(60);
        cache.insert(hash("a"), 1, later);
        cache.insert(hash("past"), 2, Instant::now());
        assert_eq!(cache.get(&hash("a")), Some(1));
        assert_eq!(cache.get(&hash("past")), None);
        assert_eq!(cache.get(&hash("b")), None);
        cache.clear();
        assert_eq!(cache.get(&hash("a")), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = CredentialCache::new();
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..MAX_CACHED + 10 {
            cache.insert(hash(&i.to_string()), (), later);
        }
        assert!(cache.len() <= MAX_CACHED, "{} entries", cache.len());
    }
}
