//! The project's signing keys for SMART Backend Services (`private_key_jwt`): ES384 keys made by
//! Wearlink, kept sealed like every project secret (one sealed secret, `FHIR_SERVER_SIGNING_KEYS`,
//! holding the list), the public halves served as a JWKS, and the client assertions signed with
//! the newest key.
//!
//! Facts: SMART App Launch 2.x, "Backend Services" (hl7.org/fhir/smart-app-launch/backend-services.html):
//! `alg` RS384 or ES384, `kid` in the header, `iss` = `sub` = client id, `aud` = the token URL,
//! `exp` no more than 5 minutes ahead, a `jti` never used before.
//! ES384 was chosen over RS384: keys are made in microseconds (an RSA key takes seconds) and small.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::FhirServerError;

/// How long a rotated-out key stays in the JWKS: platforms cache a client's JWKS, and an assertion
/// signed just before the rotation must still verify.
pub const RETIRED_KEY_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// How far ahead an assertion expires: under SMART's 5 minutes, with room for clock skew.
const ASSERTION_LIFETIME_SECS: i64 = 240;

/// One signing key as stored (inside the sealed secret).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    /// PKCS#8 DER of the private key, base64url.
    pkcs8: String,
    pub created_at: i64,
    /// When a newer key replaced it; it stays in the JWKS until `RETIRED_KEY_KEPT_MS` after.
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// The project's keys, newest last.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeySet {
    pub keys: Vec<StoredKey>,
}

impl KeySet {
    pub fn from_json(bytes: &[u8]) -> Result<Self, FhirServerError> {
        serde_json::from_slice(bytes)
            .map_err(|_| FhirServerError::Keys("the stored signing keys cannot be read".into()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("keys serialize")
    }

    /// The key assertions are signed with.
    pub fn current(&self) -> Option<&StoredKey> {
        self.keys.iter().rev().find(|k| k.retired_at.is_none())
    }

    /// Adds a fresh key as the current one; the former current key is retired at `now`, and keys
    /// retired longer ago than `RETIRED_KEY_KEPT_MS` are dropped.
    pub fn rotate(&mut self, now: i64) {
        for key in &mut self.keys {
            key.retired_at.get_or_insert(now);
        }
        self.keys.retain(|k| k.retired_at.is_some_and(|at| now - at < RETIRED_KEY_KEPT_MS));
        self.keys.push(generate(now));
    }

    /// The keys a platform may see signatures from: the current one and those retired recently.
    pub fn served(&self, now: i64) -> impl DoubleEndedIterator<Item = &StoredKey> {
        self.keys.iter().filter(move |k| k.retired_at.is_none_or(|at| now - at < RETIRED_KEY_KEPT_MS))
    }

    /// The public keys as a JWK Set (RFC 7517), newest first.
    pub fn jwks(&self, now: i64) -> Value {
        let keys: Vec<Value> = self.served(now).filter_map(|k| public_jwk(k).ok()).rev().collect();
        json!({ "keys": keys })
    }
}

fn generate(now: i64) -> StoredKey {
    let secret = p384::SecretKey::random(&mut rand::rngs::OsRng);
    let der = secret.to_pkcs8_der().expect("a P-384 key encodes as PKCS#8");
    StoredKey {
        kid: uuid::Uuid::new_v4().simple().to_string(),
        alg: "ES384".into(),
        pkcs8: URL_SAFE_NO_PAD.encode(der.as_bytes()),
        created_at: now,
        retired_at: None,
    }
}

fn der(key: &StoredKey) -> Result<Vec<u8>, FhirServerError> {
    URL_SAFE_NO_PAD.decode(&key.pkcs8).map_err(|_| FhirServerError::Keys("a stored signing key is damaged".into()))
}

/// `{kty, crv, x, y, kid, alg, use}` of one key's public half.
fn public_jwk(key: &StoredKey) -> Result<Value, FhirServerError> {
    let secret = p384::SecretKey::from_pkcs8_der(&der(key)?)
        .map_err(|_| FhirServerError::Keys("a stored signing key is damaged".into()))?;
    let mut jwk = serde_json::to_value(secret.public_key().to_jwk()).expect("a JWK serializes");
    jwk["kid"] = json!(key.kid);
    jwk["alg"] = json!(key.alg);
    jwk["use"] = json!("sig");
    Ok(jwk)
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: String,
}

/// A fresh client assertion for one token request at `token_url`.
pub fn assertion(key: &StoredKey, client_id: &str, token_url: &str, now_ms: i64) -> Result<String, FhirServerError> {
    let now = now_ms / 1000;
    let claims = AssertionClaims {
        iss: client_id,
        sub: client_id,
        aud: token_url,
        exp: now + ASSERTION_LIFETIME_SECS,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some(key.kid.clone());
    let encoding = jsonwebtoken::EncodingKey::from_ec_der(&der(key)?);
    jsonwebtoken::encode(&header, &claims, &encoding)
        .map_err(|e| FhirServerError::Keys(format!("signing the client assertion failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assertion_verifies_against_the_served_jwks_and_carries_the_smart_claims() {
        let mut keys = KeySet::default();
        keys.rotate(1_000);
        let now = 1_800_000_000_000;
        let jwt = assertion(keys.current().unwrap(), "client-1", "https://fhir.example/token", now).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(keys.jwks(now - 1_000_000)).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES384);
        let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("the kid is in the JWKS");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES384);
        validation.set_audience(&["https://fhir.example/token"]);
        validation.set_issuer(&["client-1"]);
        validation.validate_exp = false;
        let claims =
            jsonwebtoken::decode::<Value>(&jwt, &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(), &validation)
                .unwrap()
                .claims;
        assert_eq!(claims["sub"], "client-1");
        let exp = claims["exp"].as_i64().unwrap();
        assert!(exp > now / 1000 && exp <= now / 1000 + 300, "exp at most 5 minutes ahead: {exp}");
        let again = assertion(keys.current().unwrap(), "client-1", "https://fhir.example/token", now).unwrap();
        let again = jsonwebtoken::dangerous::insecure_decode::<Value>(&again).unwrap().claims;
        assert_ne!(again["jti"], claims["jti"], "every assertion has its own jti");
    }

    #[test]
    fn rotation_keeps_the_old_key_served_for_a_while_then_drops_it() {
        let mut keys = KeySet::default();
        keys.rotate(0);
        let first = keys.current().unwrap().kid.clone();
        keys.rotate(1_000);
        let second = keys.current().unwrap().kid.clone();
        assert_ne!(first, second);
        let kids = |set: &KeySet, now| -> Vec<String> {
            set.jwks(now)["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(kids(&keys, 2_000), vec![second.clone(), first.clone()], "newest first, the old one beside it");
        assert_eq!(kids(&keys, 1_000 + RETIRED_KEY_KEPT_MS), vec![second.clone()], "gone after the overlap");
        keys.rotate(2 * RETIRED_KEY_KEPT_MS);
        assert_eq!(keys.keys.len(), 2, "keys retired long ago are dropped from storage too");
        let jwk = &keys.jwks(2 * RETIRED_KEY_KEPT_MS)["keys"][0];
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str(), jwk["use"].as_str()),
            (Some("EC"), Some("P-384"), Some("sig"))
        );
        assert!(jwk.get("d").is_none(), "never the private part");
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let mut keys = KeySet::default();
        keys.rotate(0);
        let shown = format!("{keys:?}");
        assert!(!shown.contains(&keys.keys[0].pkcs8), "{shown}");
    }
}
