//! Device and publisher tokens: HS256 JWTs signed with the shared secret (`CUE_AUTH_SECRET`).
//!
//! * Device token: `sub` = device id, `events` = the events it may follow (or `["*"]`), `exp`;
//!   optionally `priority` = `"critical"`, which grants prefetch's never-shed class.
//! * Publisher token: `role` = `"publisher"`, `exp`; optionally `events`, the only events it
//!   may publish (without it, every event).
//! * Admin token: `role` = `"admin"`, `exp`: drains and undrains edges. It cannot publish, and
//!   a publisher token cannot drain.
//! * Device and publisher tokens may carry `tenant` (1-32 chars of `[a-z0-9-]`): the tenant
//!   whose events they follow or publish, their `events` claims naming that tenant's bare event
//!   names. Without it, the default tenant (every token before tenants existed).
//!
//! Verification takes `now` (seconds since the Unix epoch) from the caller, so expiry is
//! testable without a clock, and it never allows a token without `exp`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest token accepted, in bytes. A JWT for a device with a handful of events is ~250 bytes.
pub const MAX_TOKEN_LEN: usize = 2048;
/// Shortest secret accepted: HS256 wants at least 256 bits.
pub const MIN_SECRET_LEN: usize = 32;

/// The claims Cue reads. Unknown claims are ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Device id (device tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Events a device may follow; `"*"` allows every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// `"publisher"` for publisher tokens, `"admin"` for admin tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `"critical"` grants a device prefetch's never-shed priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// The tenant whose events the token is for (1-32 chars of `[a-z0-9-]`); absent: the
    /// default tenant, whose events have bare names. A device follows, and a publisher
    /// publishes, only its tenant's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    /// True when this token allows following `event`.
    pub fn allows_event(&self, event: &str) -> bool {
        self.events
            .as_ref()
            .is_some_and(|evs| evs.iter().any(|e| e == "*" || e == event))
    }
    /// True when this is a publisher token.
    pub fn is_publisher(&self) -> bool {
        self.role.as_deref() == Some("publisher")
    }
    /// True when this is an admin token (the edge's `/admin/drain` and `/admin/undrain`).
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some("admin")
    }
    /// True when a publisher token may publish `event`: its `events` claim lists it (or `*`),
    /// or it has no `events` claim.
    pub fn may_publish(&self, event: &str) -> bool {
        self.is_publisher() && (self.events.is_none() || self.allows_event(event))
    }
    /// The tenant the token is for, `None` for the default tenant.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
    /// True when the token grants the `critical` priority class.
    pub fn grants_critical(&self) -> bool {
        self.priority.as_deref() == Some("critical")
    }
}

/// Why a token was refused. All of these map to HTTP 401 (a valid token for the wrong event is
/// the caller's 403, decided with [`Claims::allows_event`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was presented.
    #[error("missing token")]
    Missing,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token too long")]
    TooLong,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// Bad signature, bad encoding, wrong algorithm or missing claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Signs and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenKeys {
    enc: EncodingKey,
    dec: DecodingKey,
    /// HMAC-SHA256 under the secret, for keys derived from it ([`TokenKeys::derive`]).
    kdf: ring::hmac::Key,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth secret must be at least {MIN_SECRET_LEN} bytes (got {0})")]
pub struct WeakSecret(pub usize);

impl TokenKeys {
    /// Keys from a shared secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(WeakSecret(secret.len()));
        }
        Ok(Self {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            kdf: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        })
    }

    /// A 32-byte key for another purpose, derived from the shared secret: HMAC-SHA256(secret,
    /// `label`). Every process holding the secret derives the same key; different labels give
    /// independent keys, and none reveals the secret or token signatures (tokens sign a JWT
    /// header and claims, never a bare label).
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.kdf, label.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(tag.as_ref());
        k
    }

    /// Mints a token with these claims.
    pub fn mint(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.enc)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// A device token for `sub` allowed `events`, valid for `ttl_s` from `now_s`.
    pub fn mint_device(&self, sub: &str, events: &[String], now_s: u64, ttl_s: u64) -> String {
        self.mint_tenant_device(None, sub, events, now_s, ttl_s)
    }

    /// A device token of `tenant` (`None`: the default tenant) for `sub` allowed `events` (bare
    /// names of that tenant's events), valid for `ttl_s` from `now_s`.
    pub fn mint_tenant_device(
        &self,
        tenant: Option<&str>,
        sub: &str,
        events: &[String],
        now_s: u64,
        ttl_s: u64,
    ) -> String {
        self.mint(&Claims {
            sub: Some(sub.to_string()),
            events: Some(events.to_vec()),
            role: None,
            priority: None,
            tenant: tenant.map(str::to_string),
            exp: now_s.saturating_add(ttl_s),
        })
    }

    /// A publisher token of `tenant` (`None`: the default tenant) for every event of it.
    pub fn mint_tenant_publisher(&self, tenant: Option<&str>, now_s: u64, ttl_s: u64) -> String {
        self.mint_publisher_in(tenant, None, now_s, ttl_s)
    }

    /// An admin token (an edge's drain, undrain and send-path switch), valid for `ttl_s` from
    /// `now_s`.
    pub fn mint_admin(&self, now_s: u64, ttl_s: u64) -> String {
        self.mint(&Claims {
            sub: None,
            events: None,
            role: Some("admin".into()),
            priority: None,
            tenant: None,
            exp: now_s.saturating_add(ttl_s),
        })
    }

    /// A publisher token for every event, valid for `ttl_s` from `now_s`.
    pub fn mint_publisher(&self, now_s: u64, ttl_s: u64) -> String {
        self.mint_publisher_for(None, now_s, ttl_s)
    }

    /// A publisher token limited to `events` (`None`: every event).
    pub fn mint_publisher_for(&self, events: Option<&[String]>, now_s: u64, ttl_s: u64) -> String {
        self.mint_publisher_in(None, events, now_s, ttl_s)
    }

    /// A publisher token of `tenant` limited to `events` of it (`None`: every event).
    fn mint_publisher_in(
        &self,
        tenant: Option<&str>,
        events: Option<&[String]>,
        now_s: u64,
        ttl_s: u64,
    ) -> String {
        self.mint(&Claims {
            sub: None,
            events: events.map(<[String]>::to_vec),
            role: Some("publisher".into()),
            priority: None,
            tenant: tenant.map(str::to_string),
            exp: now_s.saturating_add(ttl_s),
        })
    }

    /// Verifies signature, algorithm and expiry against `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        check_size(token)?;
        check(token, now_s, &self.dec, Algorithm::HS256)
    }

    /// Verifies a device token and checks it may follow every event in `events`.
    /// `Err(Ok(event))` names the first event the token does not allow (HTTP 403).
    pub fn verify_device<'a>(
        &self,
        token: &str,
        now_s: u64,
        events: impl IntoIterator<Item = &'a str>,
    ) -> Result<Claims, Result<String, TokenError>> {
        device_claims(self.verify(token, now_s).map_err(Err)?, events)
    }
}

/// Refuses an empty or oversized token before any parsing.
pub(crate) fn check_size(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    Ok(())
}

/// Signature with `key` under exactly `alg`, a required `exp`, and expiry against the caller's
/// clock.
pub(crate) fn check(
    token: &str,
    now_s: u64,
    key: &DecodingKey,
    alg: Algorithm,
) -> Result<Claims, TokenError> {
    let mut v = Validation::new(alg);
    // Expiry is checked below against the caller's clock, not the library's.
    v.validate_exp = false;
    v.required_spec_claims = ["exp"].into_iter().map(String::from).collect();
    let data = jsonwebtoken::decode::<Claims>(token, key, &v)
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    if data.claims.exp <= now_s {
        return Err(TokenError::Expired);
    }
    if let Some(t) = &data.claims.tenant {
        if !crate::cue::valid_tenant(t) {
            return Err(TokenError::Invalid(
                "tenant must be 1-32 chars of [a-z0-9-]".into(),
            ));
        }
    }
    Ok(data.claims)
}

/// A verified token's claims as a device's: it must be a device token allowed every event.
pub(crate) fn device_claims<'a>(
    claims: Claims,
    events: impl IntoIterator<Item = &'a str>,
) -> Result<Claims, Result<String, TokenError>> {
    {
        if claims.events.is_none() || claims.is_publisher() {
            return Err(Err(TokenError::Invalid(
                "not a device token (no events claim)".into(),
            )));
        }
        for e in events {
            if !claims.allows_event(e) {
                return Err(Ok(e.to_string()));
            }
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[7u8; 32]).unwrap()
    }

    #[test]
    fn derived_keys_are_shared_by_secret_and_separated_by_label() {
        let a = keys().derive("cue-edge/quic-stateless-reset/v1");
        assert_eq!(a, keys().derive("cue-edge/quic-stateless-reset/v1"));
        assert_ne!(a, keys().derive("another purpose"));
        assert_ne!(
            a,
            TokenKeys::new(&[8u8; 32])
                .unwrap()
                .derive("cue-edge/quic-stateless-reset/v1")
        );
        // HMAC-SHA256 (RFC 4231 test case 2: key "Jefe").
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&k, b"what do ya want for nothing?");
        assert_eq!(
            tag.as_ref()[..4],
            [0x5b, 0xdc, 0xc1, 0x46],
            "the HMAC under derive() is SHA-256's"
        );
    }

    #[test]
    fn weak_secret_refused() {
        assert_eq!(TokenKeys::new(b"short").unwrap_err(), WeakSecret(5));
    }

    #[test]
    fn device_token_round_trip_and_events() {
        let k = keys();
        let t = k.mint_device("dev-1", &["fight".into()], 1000, 60);
        let c = k.verify(&t, 1000).unwrap();
        assert_eq!(c.sub.as_deref(), Some("dev-1"));
        assert!(c.allows_event("fight"));
        assert!(!c.allows_event("other"));
        assert!(k.verify_device(&t, 1000, ["fight"]).is_ok());
        assert_eq!(
            k.verify_device(&t, 1000, ["fight", "other"]).unwrap_err(),
            Ok("other".into())
        );
        let star = k.mint_device("d", &["*".into()], 1000, 60);
        assert!(k.verify_device(&star, 1000, ["anything"]).is_ok());
    }

    #[test]
    fn publisher_scopes_and_critical_claim() {
        let k = keys();
        let all = k.verify(&k.mint_publisher(1000, 60), 1000).unwrap();
        assert!(all.may_publish("fight") && all.may_publish("other"));
        let one = k
            .verify(
                &k.mint_publisher_for(Some(&["fight".into()]), 1000, 60),
                1000,
            )
            .unwrap();
        assert!(one.may_publish("fight") && !one.may_publish("other"));
        let dev = k
            .verify(&k.mint_device("d", &["*".into()], 1000, 60), 1000)
            .unwrap();
        assert!(!dev.may_publish("fight"), "a device token never publishes");
        assert!(!dev.grants_critical());
        let crit = k.mint(&Claims {
            priority: Some("critical".into()),
            ..dev
        });
        assert!(k.verify(&crit, 1000).unwrap().grants_critical());
        // A scoped publisher token is not a device token for its events.
        let p = k.mint_publisher_for(Some(&["fight".into()]), 1000, 60);
        assert!(k.verify_device(&p, 1000, ["fight"]).is_err());
    }

    #[test]
    fn expiry_uses_callers_clock() {
        let k = keys();
        let t = k.mint_publisher(1000, 60);
        assert!(k.verify(&t, 1059).unwrap().is_publisher());
        assert_eq!(k.verify(&t, 1060).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn bad_tokens_refused() {
        let k = keys();
        let other = TokenKeys::new(&[8u8; 32]).unwrap();
        let t = other.mint_publisher(1000, 60);
        assert!(matches!(k.verify(&t, 1000), Err(TokenError::Invalid(_))));
        assert!(matches!(
            k.verify("abc.def.ghi", 1000),
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(k.verify("", 1000).unwrap_err(), TokenError::Missing);
        assert_eq!(
            k.verify(&"a".repeat(3000), 1000).unwrap_err(),
            TokenError::TooLong
        );
        // A publisher token is not a device token.
        let p = k.mint_publisher(1000, 60);
        assert!(matches!(
            k.verify_device(&p, 1000, ["e"]),
            Err(Err(TokenError::Invalid(_)))
        ));
        // alg=none is refused.
        let none = format!(
            "{}.{}.",
            base64url(br#"{"alg":"none","typ":"JWT"}"#),
            base64url(br#"{"role":"publisher","exp":99999999999}"#)
        );
        assert!(matches!(k.verify(&none, 1000), Err(TokenError::Invalid(_))));
    }

    fn base64url(b: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
