//! Asymmetric token keys: the origin signs with a private key (Ed25519 `EdDSA` or P-256
//! `ES256`), edges and prefetch verify with public keys only, from a key set (JWKS, RFC 7517)
//! where each key has a `kid`.
//!
//! - [`SigningKeys`]: the private set an origin holds (one active key, older ones kept until
//!   retired so their tokens still verify), stored in a file of its own format (0600), which
//!   exports the public set.
//! - [`KeySet`]: a public set, parsed with limits; a set that holds a private or symmetric key
//!   is refused, so a partner's host can be given the file without being able to mint.
//! - [`Verifier`]: what a service checks tokens with: a shared HS256 secret (single-host use,
//!   tests) or a public key set.
//!
//! A token names its key in the header (`kid`); its `alg` must be the key's. Verification takes
//! `now` from the caller, as [`crate::token`] does.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};

use crate::token::{check, check_size, device_claims, Claims, TokenError, TokenKeys};

/// Largest key set file accepted.
pub const MAX_KEYSET_BYTES: usize = 64 * 1024;
/// Most keys in one set.
pub const MAX_KEYS: usize = 64;

/// Why a key or key set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not the JSON shape expected.
    #[error("key set: {0}")]
    Malformed(String),
    /// A key of a type or curve Cue does not use.
    #[error("key {kid}: {why}")]
    Unsupported {
        /// The key's id.
        kid: String,
        /// What is wrong.
        why: String,
    },
    /// A public set that holds a private or symmetric key.
    #[error("key {0}: a public key set must not hold private or symmetric keys")]
    Private(String),
    /// Generating or reading a private key failed.
    #[error("private key: {0}")]
    Crypto(String),
}

/// The signature algorithms Cue's asymmetric tokens use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyAlg {
    /// Ed25519.
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

impl KeyAlg {
    fn jwt(self) -> Algorithm {
        match self {
            KeyAlg::EdDSA => Algorithm::EdDSA,
            KeyAlg::ES256 => Algorithm::ES256,
        }
    }
}

/// One private key, as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredKey {
    kid: String,
    alg: KeyAlg,
    /// PKCS#8 DER, base64url.
    pkcs8: String,
    /// When it was made, seconds since the Unix epoch.
    created_s: u64,
}

/// The stored form of a [`SigningKeys`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Stored {
    active: String,
    keys: Vec<StoredKey>,
}

/// An origin's private keys: the active one signs; all of them are exported for verification.
pub struct SigningKeys {
    stored: Stored,
    active: (EncodingKey, Header),
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("active", &self.stored.active)
            .field("keys", &self.stored.keys.len())
            .finish()
    }
}

fn generate(alg: KeyAlg, now_s: u64) -> Result<StoredKey, KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = match alg {
        KeyAlg::EdDSA => signature::Ed25519KeyPair::generate_pkcs8(&rng),
        KeyAlg::ES256 => signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        ),
    }
    .map_err(|e| KeyError::Crypto(e.to_string()))?;
    let public = public_key(alg, pkcs8.as_ref())?;
    // The kid names the key: the first 6 bytes of its public key's SHA-256, in hex.
    let digest = ring::digest::digest(&ring::digest::SHA256, &public);
    let kid: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(StoredKey {
        kid,
        alg,
        pkcs8: B64.encode(pkcs8.as_ref()),
        created_s: now_s,
    })
}

/// The raw public key of a PKCS#8 private key: 32 bytes (Ed25519) or the 65-byte uncompressed
/// point (P-256).
fn public_key(alg: KeyAlg, pkcs8: &[u8]) -> Result<Vec<u8>, KeyError> {
    let e = |e: ring::error::KeyRejected| KeyError::Crypto(e.to_string());
    Ok(match alg {
        KeyAlg::EdDSA => signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(e)?
            .public_key()
            .as_ref()
            .to_vec(),
        KeyAlg::ES256 => signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(e)?
        .public_key()
        .as_ref()
        .to_vec(),
    })
}

fn encoding(k: &StoredKey) -> Result<(EncodingKey, Header), KeyError> {
    let der = B64
        .decode(&k.pkcs8)
        .map_err(|e| KeyError::Crypto(format!("key {}: {e}", k.kid)))?;
    // Parse once here so a damaged file fails at load, not at the first token.
    public_key(k.alg, &der)?;
    let key = match k.alg {
        KeyAlg::EdDSA => EncodingKey::from_ed_der(&der),
        KeyAlg::ES256 => EncodingKey::from_ec_der(&der),
    };
    let mut h = Header::new(k.alg.jwt());
    h.kid = Some(k.kid.clone());
    Ok((key, h))
}

impl SigningKeys {
    /// A new set with one fresh key of `alg`.
    pub fn generate(alg: KeyAlg, now_s: u64) -> Result<Self, KeyError> {
        let k = generate(alg, now_s)?;
        Self::from_stored(Stored {
            active: k.kid.clone(),
            keys: vec![k],
        })
    }

    fn from_stored(stored: Stored) -> Result<Self, KeyError> {
        let active = stored
            .keys
            .iter()
            .find(|k| k.kid == stored.active)
            .ok_or_else(|| {
                KeyError::Malformed(format!("active key {} is not in the set", stored.active))
            })?;
        let active = encoding(active)?;
        for k in &stored.keys {
            encoding(k)?;
        }
        Ok(Self { stored, active })
    }

    /// Parses the stored form (see [`SigningKeys::to_json`]).
    pub fn from_json(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_KEYSET_BYTES {
            return Err(KeyError::Malformed(format!(
                "larger than {MAX_KEYSET_BYTES} bytes"
            )));
        }
        let stored: Stored =
            serde_json::from_str(text).map_err(|e| KeyError::Malformed(e.to_string()))?;
        if stored.keys.len() > MAX_KEYS {
            return Err(KeyError::Malformed(format!("more than {MAX_KEYS} keys")));
        }
        Self::from_stored(stored)
    }

    /// The stored form: `{"active":KID,"keys":[{"kid","alg","pkcs8","created_s"}]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.stored).expect("plain data")
    }

    /// Adds a fresh key of `alg` and makes it the active one; the others stay (their tokens
    /// still verify) until [`SigningKeys::retire`]d. Returns the new kid.
    pub fn rotate(&mut self, alg: KeyAlg, now_s: u64) -> Result<String, KeyError> {
        if self.stored.keys.len() >= MAX_KEYS {
            return Err(KeyError::Malformed(format!(
                "{MAX_KEYS} keys already: retire some first"
            )));
        }
        let k = generate(alg, now_s)?;
        let kid = k.kid.clone();
        self.active = encoding(&k)?;
        self.stored.keys.push(k);
        self.stored.active = kid.clone();
        Ok(kid)
    }

    /// Drops `kid` from the set (never the active key); tokens signed with it stop verifying
    /// wherever the exported set is replaced.
    pub fn retire(&mut self, kid: &str) -> Result<(), KeyError> {
        if kid == self.stored.active {
            return Err(KeyError::Malformed(format!(
                "{kid} is the active key: rotate first"
            )));
        }
        let before = self.stored.keys.len();
        self.stored.keys.retain(|k| k.kid != kid);
        if self.stored.keys.len() == before {
            return Err(KeyError::Malformed(format!("no key {kid} in the set")));
        }
        Ok(())
    }

    /// The active key's id.
    pub fn active_kid(&self) -> &str {
        &self.stored.active
    }

    /// Signs `claims` with the active key.
    pub fn mint(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&self.active.1, claims, &self.active.0)
            .expect("signing plain claims with a key that parsed cannot fail")
    }

    /// The public key set (JWKS), for edges and prefetch.
    pub fn export(&self) -> String {
        let keys: Vec<serde_json::Value> = self
            .stored
            .keys
            .iter()
            .map(|k| {
                let der = B64.decode(&k.pkcs8).expect("checked at load");
                let public = public_key(k.alg, &der).expect("checked at load");
                match k.alg {
                    KeyAlg::EdDSA => serde_json::json!({
                        "kty": "OKP", "crv": "Ed25519", "x": B64.encode(&public),
                        "kid": k.kid, "alg": "EdDSA", "use": "sig",
                    }),
                    KeyAlg::ES256 => serde_json::json!({
                        "kty": "EC", "crv": "P-256",
                        "x": B64.encode(&public[1..33]), "y": B64.encode(&public[33..65]),
                        "kid": k.kid, "alg": "ES256", "use": "sig",
                    }),
                }
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).expect("plain data")
    }

    /// The public set, ready to verify with.
    pub fn key_set(&self) -> KeySet {
        KeySet::from_jwks(&self.export()).expect("an exported set parses")
    }
}

/// A public key set: verifies tokens, cannot sign any.
#[derive(Clone)]
pub struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS (`{"keys":[...]}`): each key needs a `kid` (1-64 chars) and is Ed25519
    /// (`kty` OKP) or P-256 (`kty` EC); a key with private (`d`) or symmetric (`k`, `oct`)
    /// material, or an `alg` that does not fit it, refuses the whole set.
    pub fn from_jwks(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_KEYSET_BYTES {
            return Err(KeyError::Malformed(format!(
                "larger than {MAX_KEYSET_BYTES} bytes"
            )));
        }
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| KeyError::Malformed(e.to_string()))?;
        let list = v["keys"]
            .as_array()
            .ok_or_else(|| KeyError::Malformed("no \"keys\" array".into()))?;
        if list.is_empty() || list.len() > MAX_KEYS {
            return Err(KeyError::Malformed(format!(
                "{} keys: need 1..={MAX_KEYS}",
                list.len()
            )));
        }
        let mut keys = HashMap::new();
        for k in list {
            let kid = k["kid"]
                .as_str()
                .filter(|s| (1..=64).contains(&s.len()))
                .ok_or_else(|| KeyError::Malformed("a key without a kid of 1-64 chars".into()))?
                .to_string();
            let bad = |why: &str| KeyError::Unsupported {
                kid: kid.clone(),
                why: why.into(),
            };
            if k.get("d").is_some() || k.get("k").is_some() || k["kty"] == "oct" {
                return Err(KeyError::Private(kid));
            }
            let s = |f: &str| k[f].as_str().ok_or_else(|| bad(&format!("no \"{f}\"")));
            let (alg, key) = match (s("kty")?, s("crv")?) {
                ("OKP", "Ed25519") => (
                    Algorithm::EdDSA,
                    DecodingKey::from_ed_components(s("x")?).map_err(|e| bad(&e.to_string()))?,
                ),
                ("EC", "P-256") => (
                    Algorithm::ES256,
                    DecodingKey::from_ec_components(s("x")?, s("y")?)
                        .map_err(|e| bad(&e.to_string()))?,
                ),
                (kty, crv) => {
                    return Err(bad(&format!(
                        "{kty}/{crv}: Cue uses OKP/Ed25519 or EC/P-256"
                    )))
                }
            };
            if let Some(a) = k["alg"].as_str() {
                let want = if alg == Algorithm::EdDSA {
                    "EdDSA"
                } else {
                    "ES256"
                };
                if a != want {
                    return Err(bad(&format!("alg {a} does not fit the key ({want})")));
                }
            }
            if keys.insert(kid.clone(), (alg, key)).is_some() {
                return Err(KeyError::Malformed(format!("kid {kid} twice")));
            }
        }
        Ok(Self { keys })
    }

    /// The kids in the set, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut k: Vec<String> = self.keys.keys().cloned().collect();
        k.sort();
        k
    }

    /// True when the key `token`'s header names (`kid`, with its `alg`) is in this set. Checks
    /// no signature: for a token whose signature a ticket vouches for.
    pub fn knows_key_of(&self, token: &str) -> bool {
        let Ok(h) = jsonwebtoken::decode_header(token) else {
            return false;
        };
        h.kid
            .and_then(|kid| self.keys.get(&kid))
            .is_some_and(|(alg, _)| *alg == h.alg)
    }

    /// Verifies a token signed by a key of this set: its header's `kid` names the key and its
    /// `alg` must be that key's.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        check_size(token)?;
        let h =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let kid = h
            .kid
            .ok_or_else(|| TokenError::Invalid("no kid in the token header".into()))?;
        let (alg, key) = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::Invalid(format!("unknown key {kid}")))?;
        if h.alg != *alg {
            return Err(TokenError::Invalid(format!(
                "alg {:?} is not key {kid}'s",
                h.alg
            )));
        }
        check(token, now_s, key, *alg)
    }
}

/// Admissions whose token already passed a public-key check, so a device that reconnects (a
/// storm after an edge or network blip) costs a SHA-256 instead of a signature check (~1 us
/// against ~40 us for EdDSA). The key is SHA-256 of the token and the events asked for, the
/// value the token's expiry: only exact repeats hit, nothing is cached past `exp`, and the
/// cache is emptied whenever the key set changes (a retired key must stop admitting). Bounded:
/// beyond `cap` entries the oldest go first. One per shard; not shared.
///
/// With a [`TicketKey`] the cache also hands each device its entry to keep: an admission
/// ticket, which any shard or process holding the same ticket secret accepts, after a restart
/// too (see [`TicketKey`]).
#[derive(Debug)]
pub struct AdmitCache {
    /// Admission key -> the token's `exp` and tenant.
    map: HashMap<[u8; 32], (u64, Option<Box<str>>)>,
    order: std::collections::VecDeque<[u8; 32]>,
    cap: usize,
    tickets: Option<TicketKey>,
    /// Hits, for metrics.
    pub hits: u64,
    /// Admissions by a valid ticket, for metrics.
    pub ticket_hits: u64,
    /// Tickets presented that did not hold (forged, expired, for another token or events, under
    /// another secret, or their key left the set), for metrics: the device was checked for real.
    pub tickets_refused: u64,
}

/// What an admission hands back: a ticket for the device to present next time, when it did not
/// come with a valid one and tickets are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The ticket (URL-safe base64, [`TICKET_LEN`] characters).
    pub value: String,
    /// Unix seconds after which it no longer admits (the token's `exp`).
    pub exp: u64,
}

impl AdmitCache {
    /// A cache of at most `cap` admissions, without tickets.
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
            cap,
            tickets: None,
            hits: 0,
            ticket_hits: 0,
            tickets_refused: 0,
        }
    }

    /// The same, issuing and accepting admission tickets under `key`.
    pub fn with_tickets(mut self, key: TicketKey) -> Self {
        self.tickets = Some(key);
        self
    }

    fn key<'a>(token: &str, events: impl IntoIterator<Item = &'a str>) -> [u8; 32] {
        let mut c = ring::digest::Context::new(&ring::digest::SHA256);
        c.update(token.as_bytes());
        for e in events {
            c.update(b"\0");
            c.update(e.as_bytes());
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(c.finish().as_ref());
        k
    }

    /// Verifies a device token for `events` with `v`, answering from a valid `ticket` or from
    /// the cache for a repeat of an admission a public key set passed (a shared secret is
    /// checked every time: it costs about what the cache does, and issues no ticket).
    pub fn verify_device<'a>(
        &mut self,
        v: &Verifier,
        token: &str,
        ticket: Option<&str>,
        now_s: u64,
        events: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<Option<Ticket>, Result<String, TokenError>> {
        self.admit_device(v, token, ticket, now_s, events)
            .map(|(t, _)| t)
    }

    /// As [`AdmitCache::verify_device`], with the token's tenant (`None`: the default tenant).
    pub fn admit_device<'a>(
        &mut self,
        v: &Verifier,
        token: &str,
        ticket: Option<&str>,
        now_s: u64,
        events: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<(Option<Ticket>, Option<String>), Result<String, TokenError>> {
        let set = match v {
            Verifier::Keys(set) if self.cap > 0 || self.tickets.is_some() => set,
            _ => {
                return v
                    .verify_device(token, now_s, events)
                    .map(|c| (None, c.tenant))
            }
        };
        check_size(token).map_err(Err)?;
        let k = Self::key(token, events.clone());
        if let (Some(t), Some(tk)) = (ticket, &self.tickets) {
            // The ticket binds the token, so the token's header is what its signature covered;
            // its key must still be in the set.
            if tk.check(t, &k, now_s).is_some() && set.knows_key_of(token) {
                // The ticket proves an edge verified this very token: its claims are read
                // without checking the signature again.
                if let Ok(tenant) = unverified_tenant(token) {
                    self.ticket_hits += 1;
                    return Ok((None, tenant));
                }
            }
            self.tickets_refused += 1;
        }
        let issue = |tickets: &Option<TicketKey>, exp: u64| {
            tickets.as_ref().map(|tk| Ticket {
                value: tk.issue(&k, exp),
                exp,
            })
        };
        if let Some((exp, tenant)) = self.map.get(&k) {
            if *exp > now_s {
                self.hits += 1;
                return Ok((
                    issue(&self.tickets, *exp),
                    tenant.as_deref().map(str::to_string),
                ));
            }
        }
        let claims = v.verify_device(token, now_s, events)?;
        let tenant = claims.tenant.clone();
        if self.cap > 0
            && self
                .map
                .insert(k, (claims.exp, tenant.as_deref().map(Into::into)))
                .is_none()
        {
            self.order.push_back(k);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
        Ok((issue(&self.tickets, claims.exp), tenant))
    }

    /// Forgets every admission (the key set changed). Tickets stay valid while their token's
    /// key is in the new set.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Admissions held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The `tenant` claim of a token whose signature was checked before (an admission ticket binds
/// it), read without checking it again.
fn unverified_tenant(token: &str) -> Result<Option<String>, ()> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default)]
        tenant: Option<String>,
    }
    let payload = token.split('.').nth(1).ok_or(())?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| ())?;
    let t: T = serde_json::from_slice(&bytes).map_err(|_| ())?;
    match t.tenant {
        Some(x) if !crate::cue::valid_tenant(&x) => Err(()),
        t => Ok(t),
    }
}

/// Length of an admission ticket: URL-safe base64 (no padding) of 8 bytes of expiry and a
/// 32-byte HMAC-SHA256 tag.
pub const TICKET_LEN: usize = 54;

/// The secret behind admission tickets: an edge that verified a device token's signature hands
/// the device `exp || HMAC(secret, label || exp || SHA-256(token, events))`; a device that
/// presents it with the same token and events is admitted by any edge process holding the
/// secret (every process on a host shares one file) for the price of a SHA-256 and an HMAC,
/// instead of a signature check: a reconnect storm after a restart does not pay ~40 us of
/// EdDSA per device. What still holds with a ticket: the token itself must be presented (the
/// ticket alone admits nothing), it expires with the token, it names exactly the events it was
/// issued for, and the token's key must still be in the key set (a retired key stops admitting
/// with or without tickets). Whoever holds the secret can admit devices on the edges that share
/// it, which the host's operator can do anyway; it grants nothing at other hosts or at the
/// origin, which never accepts tickets.
#[derive(Clone)]
pub struct TicketKey(ring::hmac::Key);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

const TICKET_LABEL: &[u8] = b"cue-edge/admit-ticket/v1";

impl TicketKey {
    /// A ticket key from a host secret (any length; [`crate::config::host_secret`] makes 32
    /// random bytes).
    pub fn new(secret: &[u8]) -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// What the tag covers: the label, the expiry and the admission's digest (on the stack).
    fn message(digest: &[u8; 32], exp: u64) -> [u8; TICKET_LABEL.len() + 40] {
        let mut m = [0u8; TICKET_LABEL.len() + 40];
        let (label, rest) = m.split_at_mut(TICKET_LABEL.len());
        label.copy_from_slice(TICKET_LABEL);
        rest[..8].copy_from_slice(&exp.to_be_bytes());
        rest[8..].copy_from_slice(digest);
        m
    }

    fn issue(&self, digest: &[u8; 32], exp: u64) -> String {
        let mut raw = [0u8; 40];
        raw[..8].copy_from_slice(&exp.to_be_bytes());
        let tag = ring::hmac::sign(&self.0, &Self::message(digest, exp));
        raw[8..].copy_from_slice(tag.as_ref());
        B64.encode(raw)
    }

    /// The expiry of `ticket` when it was issued under this key for `digest` and has not
    /// expired at `now_s`.
    fn check(&self, ticket: &str, digest: &[u8; 32], now_s: u64) -> Option<u64> {
        if ticket.len() != TICKET_LEN {
            return None;
        }
        let mut raw = [0u8; 42];
        if B64.decode_slice(ticket, &mut raw).ok()? != 40 {
            return None;
        }
        let exp = u64::from_be_bytes(raw[..8].try_into().ok()?);
        // ring::hmac::verify compares in constant time.
        ring::hmac::verify(&self.0, &Self::message(digest, exp), &raw[8..40]).ok()?;
        (exp > now_s).then_some(exp)
    }
}

/// What a service checks tokens with.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// A shared HS256 secret (`CUE_AUTH_SECRET`): single-host use and tests.
    Secret(Box<TokenKeys>),
    /// Public keys only.
    Keys(KeySet),
}

impl Verifier {
    /// Verifies signature, algorithm and expiry against `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        match self {
            Verifier::Secret(k) => k.verify(token, now_s),
            Verifier::Keys(k) => k.verify(token, now_s),
        }
    }

    /// Verifies a device token and checks it may follow every event in `events`;
    /// `Err(Ok(event))` names the first event it does not allow.
    pub fn verify_device<'a>(
        &self,
        token: &str,
        now_s: u64,
        events: impl IntoIterator<Item = &'a str>,
    ) -> Result<Claims, Result<String, TokenError>> {
        device_claims(self.verify(token, now_s).map_err(Err)?, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(exp: u64) -> Claims {
        Claims {
            sub: Some("tv-1".into()),
            events: Some(vec!["fight".into()]),
            role: None,
            priority: None,
            tenant: None,
            exp,
        }
    }

    #[test]
    fn both_algorithms_sign_and_verify_with_public_keys_only() {
        for alg in [KeyAlg::EdDSA, KeyAlg::ES256] {
            let sk = SigningKeys::generate(alg, 1000).unwrap();
            let public = KeySet::from_jwks(&sk.export()).unwrap();
            assert_eq!(public.kids(), vec![sk.active_kid().to_string()]);
            let t = sk.mint(&device(2000));
            assert_eq!(
                public.verify(&t, 1000).unwrap().sub.as_deref(),
                Some("tv-1")
            );
            assert_eq!(public.verify(&t, 2000).unwrap_err(), TokenError::Expired);
            let v = Verifier::Keys(public);
            assert!(v.verify_device(&t, 1000, ["fight"]).is_ok());
            assert_eq!(
                v.verify_device(&t, 1000, ["other"]).unwrap_err(),
                Ok("other".into())
            );
        }
    }

    #[test]
    fn rotation_keeps_old_tokens_until_the_key_is_retired() {
        let mut sk = SigningKeys::generate(KeyAlg::EdDSA, 1000).unwrap();
        let old_kid = sk.active_kid().to_string();
        let old = sk.mint(&device(5000));
        let new_kid = sk.rotate(KeyAlg::ES256, 1100).unwrap();
        assert_ne!(old_kid, new_kid);
        let new = sk.mint(&device(5000));
        let set = KeySet::from_jwks(&sk.export()).unwrap();
        assert!(set.verify(&old, 1200).is_ok() && set.verify(&new, 1200).is_ok());
        assert!(
            sk.retire(&new_kid).is_err(),
            "the active key cannot be retired"
        );
        sk.retire(&old_kid).unwrap();
        let set = KeySet::from_jwks(&sk.export()).unwrap();
        assert!(
            matches!(set.verify(&old, 1200), Err(TokenError::Invalid(m)) if m.contains("unknown key"))
        );
        assert!(set.verify(&new, 1200).is_ok());
        // The stored form round-trips, signing key included.
        let back = SigningKeys::from_json(&sk.to_json()).unwrap();
        assert_eq!(back.active_kid(), new_kid);
        assert!(set.verify(&back.mint(&device(5000)), 1200).is_ok());
    }

    #[test]
    fn a_public_set_never_holds_what_signs() {
        let sk = SigningKeys::generate(KeyAlg::EdDSA, 1000).unwrap();
        let stored: serde_json::Value = serde_json::from_str(&sk.to_json()).unwrap();
        let mut jwks: serde_json::Value = serde_json::from_str(&sk.export()).unwrap();
        assert!(
            jwks["keys"][0].get("d").is_none(),
            "export has no private part"
        );
        jwks["keys"][0]["d"] = stored["keys"][0]["pkcs8"].clone();
        assert!(matches!(
            KeySet::from_jwks(&jwks.to_string()),
            Err(KeyError::Private(_))
        ));
        let oct = r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#;
        assert!(matches!(KeySet::from_jwks(oct), Err(KeyError::Private(_))));
    }

    #[test]
    fn forged_and_confused_tokens_are_refused() {
        let sk = SigningKeys::generate(KeyAlg::EdDSA, 1000).unwrap();
        let set = sk.key_set();
        // Another key under the same kid.
        let other = SigningKeys::generate(KeyAlg::EdDSA, 1000).unwrap();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(sk.active_kid().into());
        let forged = jsonwebtoken::encode(&h, &device(5000), &other.active.0).unwrap();
        assert!(matches!(
            set.verify(&forged, 1000),
            Err(TokenError::Invalid(_))
        ));
        // HS256 with the public key's bytes as the secret (alg confusion).
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(sk.active_kid().into());
        let x = serde_json::from_str::<serde_json::Value>(&sk.export()).unwrap()["keys"][0]["x"]
            .as_str()
            .unwrap()
            .to_string();
        let confused =
            jsonwebtoken::encode(&h, &device(5000), &EncodingKey::from_secret(x.as_bytes()))
                .unwrap();
        assert!(
            matches!(set.verify(&confused, 1000), Err(TokenError::Invalid(m)) if m.contains("not key"))
        );
        // A shared-secret token, no kid.
        let hs = TokenKeys::new(&[7u8; 32]).unwrap().mint(&device(5000));
        assert!(set.verify(&hs, 1000).is_err());
        assert_eq!(set.verify("", 1000).unwrap_err(), TokenError::Missing);
    }

    #[test]
    fn malformed_sets_say_what_is_wrong() {
        for (bad, says) in [
            ("[]", "no \"keys\""),
            (r#"{"keys":[]}"#, "0 keys"),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AA"}]}"#,
                "kid",
            ),
            (
                r#"{"keys":[{"kid":"a","kty":"RSA","crv":"x","n":"AQ","e":"AQ"}]}"#,
                "RSA",
            ),
            (
                r#"{"keys":[{"kid":"a","kty":"OKP","crv":"Ed25519"}]}"#,
                "no \"x\"",
            ),
        ] {
            let e = KeySet::from_jwks(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let sk = SigningKeys::generate(KeyAlg::EdDSA, 1).unwrap();
        let mut j: serde_json::Value = serde_json::from_str(&sk.export()).unwrap();
        j["keys"][0]["alg"] = "ES256".into();
        assert!(KeySet::from_jwks(&j.to_string())
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
    }

    #[test]
    fn admit_cache_hits_repeats_only_and_forgets_on_expiry_and_reload() {
        let sk = SigningKeys::generate(KeyAlg::EdDSA, 1000).unwrap();
        let v = Verifier::Keys(sk.key_set());
        let t = sk.mint(&device(2000));
        let mut c = AdmitCache::new(2);
        assert_eq!(c.verify_device(&v, &t, None, 1000, ["fight"]), Ok(None));
        assert_eq!(c.verify_device(&v, &t, None, 1000, ["fight"]), Ok(None));
        assert_eq!(c.hits, 1);
        // Other events are another admission, checked for real (and refused here).
        assert_eq!(
            c.verify_device(&v, &t, None, 1000, ["other"]),
            Err(Ok("other".into()))
        );
        // Past exp the cache does not answer.
        assert_eq!(
            c.verify_device(&v, &t, None, 2000, ["fight"]),
            Err(Err(TokenError::Expired))
        );
        // Bounded.
        for i in 0..5 {
            let t = sk.mint(&Claims {
                sub: Some(format!("d{i}")),
                ..device(3000)
            });
            c.verify_device(&v, &t, None, 1000, ["fight"]).unwrap();
        }
        assert_eq!(c.len(), 2);
        // A new key set: the cache is emptied by its owner and old admissions are checked anew.
        c.clear();
        let other = Verifier::Keys(SigningKeys::generate(KeyAlg::EdDSA, 1).unwrap().key_set());
        assert!(c.verify_device(&other, &t, None, 1000, ["fight"]).is_err());
    }

    #[test]
    fn an_admission_hands_back_the_tokens_tenant_by_every_path() {
        let sk = SigningKeys::generate(KeyAlg::EdDSA, 1000).unwrap();
        let v = Verifier::Keys(sk.key_set());
        let t = sk.mint(&Claims {
            tenant: Some("acme".into()),
            ..device(2000)
        });
        let acme = Some("acme".to_string());
        let host = TicketKey::new(b"0123456789abcdef0123456789abcdef");
        let mut c = AdmitCache::new(4).with_tickets(host.clone());
        // Verified for real, then from the cache, then at another process by the ticket.
        let (ticket, tenant) = c.admit_device(&v, &t, None, 1000, ["fight"]).unwrap();
        assert_eq!(tenant, acme);
        assert_eq!(
            c.admit_device(&v, &t, None, 1000, ["fight"]).unwrap().1,
            acme
        );
        assert_eq!(c.hits, 1);
        let mut other = AdmitCache::new(4).with_tickets(host);
        let ticket = ticket.unwrap().value;
        let r = other
            .admit_device(&v, &t, Some(&ticket), 1000, ["fight"])
            .unwrap();
        assert_eq!((r.1, other.ticket_hits), (acme, 1));
        // A shared secret, and no tenant: the default tenant.
        let k = crate::token::TokenKeys::new(&[7u8; 32]).unwrap();
        let plain = k.mint_device("d", &["fight".into()], 1000, 60);
        let hs = Verifier::Secret(Box::new(k));
        assert_eq!(
            c.admit_device(&hs, &plain, None, 1000, ["fight"])
                .unwrap()
                .1,
            None
        );
        // A tenant claim that is not a tenant name is refused, whatever signed it.
        let bad = sk.mint(&Claims {
            tenant: Some("a/b".into()),
            ..device(2000)
        });
        assert!(matches!(
            c.admit_device(&v, &bad, None, 1000, ["fight"]),
            Err(Err(TokenError::Invalid(_)))
        ));
    }

    #[test]
    fn tickets_admit_elsewhere_only_what_was_verified_and_only_while_its_key_stays() {
        let mut sk = SigningKeys::generate(KeyAlg::EdDSA, 1000).unwrap();
        let v = Verifier::Keys(sk.key_set());
        let t = sk.mint(&device(2000));
        let host = TicketKey::new(b"0123456789abcdef0123456789abcdef");
        let mut first = AdmitCache::new(16).with_tickets(host.clone());
        let ticket = first
            .verify_device(&v, &t, None, 1000, ["fight"])
            .unwrap()
            .expect("a verified admission hands out a ticket");
        assert_eq!(ticket.exp, 2000);
        assert_eq!(ticket.value.len(), TICKET_LEN);
        // Another shard or process of the host: no cache entry, the ticket admits.
        let mut other = AdmitCache::new(16).with_tickets(host.clone());
        let ok = |c: &mut AdmitCache, v: &Verifier, tok: &str, tk: &str, now: u64, ev: &str| {
            c.verify_device(v, tok, Some(tk), now, [ev])
        };
        assert_eq!(
            ok(&mut other, &v, &t, &ticket.value, 1500, "fight"),
            Ok(None)
        );
        assert_eq!((other.ticket_hits, other.tickets_refused), (1, 0));
        // A ticket with another token, other events, or tampered: checked for real.
        let t2 = sk.mint(&Claims {
            sub: Some("d2".into()),
            ..device(2000)
        });
        let mut fresh = AdmitCache::new(0).with_tickets(host.clone());
        assert!(ok(&mut fresh, &v, &t2, &ticket.value, 1500, "fight")
            .unwrap()
            .is_some());
        assert_eq!(
            ok(&mut fresh, &v, &t, &ticket.value, 1500, "other"),
            Err(Ok("other".into()))
        );
        let mut bad = ticket.value.clone().into_bytes();
        bad[TICKET_LEN - 3] = if bad[TICKET_LEN - 3] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let bad = String::from_utf8(bad).unwrap();
        assert!(ok(&mut fresh, &v, &t, &bad, 1500, "fight")
            .unwrap()
            .is_some());
        assert_eq!(fresh.tickets_refused, 3);
        assert_eq!(fresh.ticket_hits, 0);
        // A forged token under a good ticket's name gains nothing: the ticket binds the token.
        let forged = format!("{}x", &t[..t.len() - 1]);
        assert!(ok(&mut fresh, &v, &forged, &ticket.value, 1500, "fight").is_err());
        // Another host's secret, or past exp: no.
        let mut elsewhere =
            AdmitCache::new(0).with_tickets(TicketKey::new(b"another host secret 32 bytes...."));
        assert!(ok(&mut elsewhere, &v, &t, &ticket.value, 1500, "fight")
            .unwrap()
            .is_some());
        assert_eq!(elsewhere.tickets_refused, 1);
        assert_eq!(
            ok(&mut other, &v, &t, &ticket.value, 2000, "fight"),
            Err(Err(TokenError::Expired))
        );
        // Rotation keeps the old kid: tickets still admit. Retiring it ends them.
        let old = sk.active_kid().to_string();
        sk.rotate(KeyAlg::EdDSA, 1100).unwrap();
        let rotated = Verifier::Keys(sk.key_set());
        assert_eq!(
            ok(&mut other, &rotated, &t, &ticket.value, 1500, "fight"),
            Ok(None)
        );
        sk.retire(&old).unwrap();
        let retired = Verifier::Keys(sk.key_set());
        assert!(ok(&mut other, &retired, &t, &ticket.value, 1500, "fight").is_err());
        // A shared secret neither issues nor takes tickets.
        let hs = Verifier::Secret(Box::new(
            TokenKeys::new(b"0123456789abcdef0123456789abcdef").unwrap(),
        ));
        let ht = match &hs {
            Verifier::Secret(k) => k.mint(&device(2000)),
            Verifier::Keys(_) => unreachable!(),
        };
        assert_eq!(
            ok(&mut other, &hs, &ht, &ticket.value, 1500, "fight"),
            Ok(None)
        );
    }

    proptest::proptest! {
        #[test]
        fn key_set_parser_never_panics(s in ".{0,300}") {
            let _ = KeySet::from_jwks(&s);
        }

        #[test]
        fn ticket_checker_never_panics_nor_admits_noise(s in ".{0,80}") {
            let k = TicketKey::new(b"0123456789abcdef0123456789abcdef");
            proptest::prop_assert!(k.check(&s, &[7; 32], 0).is_none());
        }
    }
}
