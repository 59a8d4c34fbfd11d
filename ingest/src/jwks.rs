//! The identity provider's public keys: a JSON Web Key Set file, read at start (a file that
//! cannot be read or has no usable key stops ingest) and read again when it changes, so keys
//! rotate without a restart. Only asymmetric signature keys are kept: a shared-secret (`oct`)
//! key would let whoever can verify also sign.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde::Deserialize;

/// A token whose `kid` no key has re-reads the file at once, but at most this often (a flood of
/// made-up kids costs one read a second).
const UNKNOWN_KID_RELOAD_GAP: Duration = Duration::from_secs(1);

/// The weakest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One key a JWT may be verified with.
#[derive(Debug)]
pub(crate) struct VerifyKey {
    kid: Option<String>,
    /// What it may verify: the JWK's `alg` when it names one, else every signature algorithm
    /// of its type and curve.
    algorithms: Vec<Algorithm>,
    /// The public key.
    pub(crate) key: DecodingKey,
}

/// The usable keys of one version of the file.
#[derive(Debug)]
pub(crate) struct KeySet {
    /// Which version of the file this is (0 at start, one more at each change): a verification
    /// is trusted only under the keys it was made with.
    pub(crate) generation: u64,
    keys: Vec<VerifyKey>,
}

/// Why no key verifies a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyMiss {
    /// No key has the token's `kid`.
    UnknownKid,
    /// The token names no `kid` and there is not exactly one key.
    NoKid,
    /// The key does not do the token's algorithm.
    WrongAlgorithm,
}

/// Why the JWKS file cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    /// The file cannot be read.
    #[error("cannot read the JWKS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a JSON Web Key Set.
    #[error("the JWKS file {path} is not a JSON Web Key Set ({{\"keys\": [...]}}): {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// No key of the file can verify a JWT.
    #[error("the JWKS file {path} has no usable key (usable: signature keys of type RSA, 2048 bits or more; EC on P-256 or P-384; OKP Ed25519){skipped}")]
    NoUsableKey {
        /// The file.
        path: PathBuf,
        /// Each key left out and why (`; kid: reason` each).
        skipped: String,
    },
}

/// The file as JSON: its keys one by one, so one odd key does not hide the others.
#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// The usable keys of a file's contents, and each key left out with why.
    fn parse(bytes: &[u8], generation: u64) -> Result<(KeySet, Vec<String>), serde_json::Error> {
        let raw: RawSet = serde_json::from_slice(bytes)?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, value) in raw.keys.into_iter().enumerate() {
            let name = value
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .map_or_else(|| format!("key #{index}"), |kid| format!("kid {kid:?}"));
            match serde_json::from_value::<Jwk>(value)
                .map_err(|e| format!("not a JWK ({e})"))
                .and_then(|jwk| usable(&jwk))
            {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(format!("{name}: {reason}")),
            }
        }
        Ok((KeySet { generation, keys }, skipped))
    }

    /// The key to verify a token with `kid` and `alg` with: the one with that `kid`, or, when
    /// the token names none, the only key.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyKey, KeyMiss> {
        let candidates: Vec<&VerifyKey> = match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|key| key.kid.as_deref() == Some(kid))
                .collect(),
            None if self.keys.len() == 1 => self.keys.iter().collect(),
            None => return Err(KeyMiss::NoKid),
        };
        if candidates.is_empty() {
            return Err(KeyMiss::UnknownKid);
        }
        candidates
            .into_iter()
            .find(|key| key.algorithms.contains(&alg))
            .ok_or(KeyMiss::WrongAlgorithm)
    }

    /// How many keys are usable.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The key of `jwk`, or why it cannot verify JWTs.
fn usable(jwk: &Jwk) -> Result<VerifyKey, String> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("its use is not sig".into()),
    }
    if let Some(operations) = &jwk.common.key_operations {
        if !operations.contains(&KeyOperations::Verify) {
            return Err("its key_ops do not include verify".into());
        }
    }
    let bad_encoding = |_| "its parameters are not base64url".to_string();
    let (key, family): (DecodingKey, &[Algorithm]) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let key = DecodingKey::from_rsa_components(&rsa.n, &rsa.e).map_err(bad_encoding)?;
            let bits = match key.kind() {
                DecodingKeyKind::RsaModulusExponent { n, .. } => significant_bits(n),
                DecodingKeyKind::SecretOrDer(_) => 0,
            };
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits (at least {MIN_RSA_BITS})"
                ));
            }
            (key, &RSA_ALGORITHMS)
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (algorithm, point_len): (&[Algorithm], usize) = match ec.curve {
                EllipticCurve::P256 => (&[Algorithm::ES256], 65),
                EllipticCurve::P384 => (&[Algorithm::ES384], 97),
                _ => return Err(format!("the curve {:?} is not supported", ec.curve)),
            };
            let key = DecodingKey::from_ec_components(&ec.x, &ec.y).map_err(bad_encoding)?;
            if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(point_len) {
                return Err("its x and y do not fit its curve".into());
            }
            (key, algorithm)
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err(format!("the curve {:?} is not supported", okp.curve));
            }
            let key = DecodingKey::from_ed_components(&okp.x).map_err(bad_encoding)?;
            if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
                return Err("its x is not an Ed25519 public key".into());
            }
            (key, &[Algorithm::EdDSA])
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a shared secret (kty oct) is never used: only public keys are".into())
        }
        _ => return Err("an unsupported key type, or a key without its parameters".into()),
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family.to_vec(),
        Some(named) => match Algorithm::try_from(named) {
            Ok(algorithm) if family.contains(&algorithm) => vec![algorithm],
            _ => return Err(format!("its alg {named} does not fit the key")),
        },
    };
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

/// The bit length of a big-endian unsigned number.
fn significant_bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        Some(first) => (bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize),
        None => 0,
    }
}

/// The JWKS file and the keys last read from it.
#[derive(Debug)]
pub(crate) struct JwksFile {
    path: PathBuf,
    /// How often the file is checked for a change.
    reload_every: Duration,
    current: RwLock<Arc<KeySet>>,
    /// Held by the one request re-reading the file; the others go on with the current keys.
    reload: tokio::sync::Mutex<Reload>,
}

#[derive(Debug)]
struct Reload {
    checked: Instant,
    /// The contents the current keys were read from (a file is small).
    contents: Vec<u8>,
}

impl JwksFile {
    /// Reads `path`: an error when it cannot be read, is not a key set or has no usable key.
    pub(crate) async fn open(path: &Path, reload_every: Duration) -> Result<Self, JwksError> {
        let contents = tokio::fs::read(path)
            .await
            .map_err(|source| JwksError::Read {
                path: path.to_owned(),
                source,
            })?;
        let (keys, skipped) = KeySet::parse(&contents, 0).map_err(|source| JwksError::Json {
            path: path.to_owned(),
            source,
        })?;
        if keys.len() == 0 {
            return Err(JwksError::NoUsableKey {
                path: path.to_owned(),
                skipped: skipped.iter().map(|s| format!("; {s}")).collect(),
            });
        }
        log_loaded(path, &keys, &skipped);
        Ok(JwksFile {
            path: path.to_owned(),
            reload_every,
            current: RwLock::new(Arc::new(keys)),
            reload: tokio::sync::Mutex::new(Reload {
                checked: Instant::now(),
                contents,
            }),
        })
    }

    /// The keys last read.
    pub(crate) fn keys(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the file again when a check is due: `reload_every` after the last, or, for a
    /// token with an unknown `kid`, a second after it. True when the keys changed. A file that
    /// cannot be read or parsed (say, half written) keeps the keys read before; a well-formed
    /// one replaces them, even with no usable key (then every JWT is refused).
    pub(crate) async fn refresh(&self, unknown_kid: bool) -> bool {
        let Ok(mut reload) = self.reload.try_lock() else {
            return false;
        };
        let due = if unknown_kid {
            self.reload_every.min(UNKNOWN_KID_RELOAD_GAP)
        } else {
            self.reload_every
        };
        if reload.checked.elapsed() < due {
            return false;
        }
        reload.checked = Instant::now();
        let contents = match tokio::fs::read(&self.path).await {
            Ok(contents) => contents,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error,
                    "cannot read the JWKS file; keeping the keys read before");
                return false;
            }
        };
        if contents == reload.contents {
            return false;
        }
        let generation = self.keys().generation + 1;
        let parsed = KeySet::parse(&contents, generation);
        reload.contents = contents;
        match parsed {
            Ok((keys, skipped)) => {
                if keys.len() == 0 {
                    tracing::error!(path = %self.path.display(), ?skipped,
                        "the JWKS file has no usable key any more: every JWT is refused");
                } else {
                    log_loaded(&self.path, &keys, &skipped);
                }
                match self.current.write() {
                    Ok(mut current) => *current = Arc::new(keys),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
                }
                true
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error,
                    "the JWKS file is not a key set; keeping the keys read before");
                false
            }
        }
    }
}

fn log_loaded(path: &Path, keys: &KeySet, skipped: &[String]) {
    let kids: Vec<&str> = keys
        .keys
        .iter()
        .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
        .collect();
    tracing::info!(path = %path.display(), generation = keys.generation, ?kids, "JWKS keys loaded");
    for reason in skipped {
        tracing::warn!(path = %path.display(), key = %reason, "JWKS key left out");
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An RSA public JWK of `bits` (a made-up modulus: parsing never checks it is a product of
    /// primes, verification would fail).
    fn rsa(kid: &str, bits: usize) -> serde_json::Value {
        let mut n = vec![0xffu8; bits / 8];
        n[0] = 0x80 | 0x01;
        json!({"kty": "RSA", "kid": kid, "n": b64(&n), "e": b64(&[1, 0, 1])})
    }

    fn ec(kid: &str, crv: &str, len: usize) -> serde_json::Value {
        json!({"kty": "EC", "kid": kid, "crv": crv, "x": b64(&vec![7; len]), "y": b64(&vec![9; len])})
    }

    fn parse(keys: Vec<serde_json::Value>) -> (KeySet, Vec<String>) {
        let bytes = serde_json::to_vec(&json!({ "keys": keys })).expect("json");
        KeySet::parse(&bytes, 0).expect("a key set")
    }

    #[test]
    fn only_asymmetric_signature_keys_are_kept() {
        let mut rsa_enc = rsa("enc", 2048);
        rsa_enc["use"] = json!("enc");
        let mut rsa_sign_only = rsa("ops", 2048);
        rsa_sign_only["key_ops"] = json!(["sign"]);
        let mut rsa_hs = rsa("hs", 2048);
        rsa_hs["alg"] = json!("HS256");
        let mut rsa_oaep = rsa("oaep", 2048);
        rsa_oaep["alg"] = json!("RSA-OAEP");
        let (keys, skipped) = parse(vec![
            rsa("rsa", 2048),
            rsa("weak", 1024),
            rsa_enc,
            rsa_sign_only,
            rsa_hs,
            rsa_oaep,
            ec("p256", "P-256", 32),
            ec("p384", "P-384", 48),
            ec("p521", "P-521", 66),
            ec("short", "P-256", 31),
            json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(&[3; 32])}),
            json!({"kty": "oct", "kid": "secret", "k": b64(b"a shared secret")}),
            json!({"kty": "RSA", "kid": "no-e", "n": b64(&[1; 256])}),
            json!({"kid": "nothing"}),
            json!("not an object"),
        ]);
        let kept: Vec<_> = keys.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kept, ["rsa", "p256", "p384", "ed"]);
        assert_eq!(skipped.len(), 11, "{skipped:#?}");
        for kid in [
            "weak", "enc", "ops", "hs", "oaep", "p521", "short", "secret",
        ] {
            assert!(
                skipped.iter().any(|s| s.contains(&format!("{kid:?}"))),
                "{kid} not reported: {skipped:#?}"
            );
        }
    }

    #[test]
    fn a_token_gets_the_key_of_its_kid_and_algorithm() {
        let mut rs256_only = rsa("pinned", 2048);
        rs256_only["alg"] = json!("RS256");
        let (keys, _) = parse(vec![rsa("a", 2048), rs256_only, ec("e", "P-256", 32)]);
        let kid_of = |kid, alg| keys.find(kid, alg).map(|k| k.kid.clone());
        assert_eq!(kid_of(Some("a"), Algorithm::PS256), Ok(Some("a".into())));
        assert_eq!(
            kid_of(Some("pinned"), Algorithm::RS256),
            Ok(Some("pinned".into()))
        );
        assert_eq!(
            kid_of(Some("pinned"), Algorithm::PS256),
            Err(KeyMiss::WrongAlgorithm)
        );
        assert_eq!(kid_of(Some("e"), Algorithm::ES256), Ok(Some("e".into())));
        // The classic confusion: an RSA-family header on an EC key, or the reverse.
        assert_eq!(
            kid_of(Some("e"), Algorithm::RS256),
            Err(KeyMiss::WrongAlgorithm)
        );
        assert_eq!(
            kid_of(Some("a"), Algorithm::ES256),
            Err(KeyMiss::WrongAlgorithm)
        );
        assert_eq!(
            kid_of(Some("a"), Algorithm::HS256),
            Err(KeyMiss::WrongAlgorithm)
        );
        assert_eq!(
            kid_of(Some("z"), Algorithm::RS256),
            Err(KeyMiss::UnknownKid)
        );
        assert_eq!(kid_of(None, Algorithm::RS256), Err(KeyMiss::NoKid));

        let (one, _) = parse(vec![rsa("only", 2048)]);
        assert!(one.find(None, Algorithm::RS256).is_ok());
        assert_eq!(
            one.find(None, Algorithm::ES256).map(|_| ()),
            Err(KeyMiss::WrongAlgorithm)
        );
    }

    #[tokio::test]
    async fn the_file_is_refused_at_start_without_a_usable_key_and_reread_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("esk-jwks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("jwks.json");
        let write = |keys: serde_json::Value| {
            std::fs::write(
                &path,
                serde_json::to_vec(&json!({ "keys": keys })).expect("json"),
            )
            .expect("write")
        };

        let missing = JwksFile::open(&path, Duration::ZERO).await;
        assert!(
            matches!(missing, Err(JwksError::Read { .. })),
            "{missing:?}"
        );
        std::fs::write(&path, b"{\"keys\": 3}").expect("write");
        let garbage = JwksFile::open(&path, Duration::ZERO).await;
        assert!(
            matches!(garbage, Err(JwksError::Json { .. })),
            "{garbage:?}"
        );
        write(json!([{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]));
        let unusable = JwksFile::open(&path, Duration::ZERO).await;
        match unusable {
            Err(error @ JwksError::NoUsableKey { .. }) => {
                assert!(error.to_string().contains("kid \"s\""), "{error}")
            }
            other => panic!("{other:?}"),
        }

        write(json!([rsa("one", 2048)]));
        let file = JwksFile::open(&path, Duration::ZERO).await.expect("usable");
        assert_eq!(file.keys().generation, 0);
        assert!(!file.refresh(false).await, "unchanged");
        write(json!([rsa("one", 2048), rsa("two", 2048)]));
        assert!(file.refresh(false).await);
        assert_eq!((file.keys().generation, file.keys().len()), (1, 2));
        // Half written: the keys stay.
        std::fs::write(&path, b"{\"keys\": [").expect("write");
        assert!(!file.refresh(false).await);
        assert_eq!(file.keys().len(), 2);
        // Emptied on purpose: nothing is trusted any more.
        write(json!([]));
        assert!(file.refresh(false).await);
        assert_eq!(file.keys().len(), 0);

        // Not due yet: a change waits for the next check.
        write(json!([rsa("one", 2048)]));
        let slow = JwksFile::open(&path, Duration::from_secs(3600))
            .await
            .expect("usable");
        write(json!([rsa("one", 2048), rsa("two", 2048)]));
        assert!(!slow.refresh(false).await);
        assert!(
            !slow.refresh(true).await,
            "an unknown kid re-reads at most once a second"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
