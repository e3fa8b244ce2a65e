//! Tenant scopes: the tenants an edge carries, named by its relay certificate.
//!
//! An edge certificate names its tenants with SAN URIs `cue-tenant:TENANT`, and the default
//! tenant with `cue-tenant:_default` (`_` is never in a tenant name). A certificate with no
//! such URI carries every tenant, as every edge did before tenants existed. The origin relays
//! to an edge only the cues, catch-up and retirements of the tenants its certificate names; the
//! edge reads the same URIs from its own certificate and refuses devices of other tenants.

use std::collections::BTreeSet;

use crate::cue::{valid_tenant, EventName};

/// Prefix of the SAN URIs that name an edge's tenants.
pub const SAN_PREFIX: &str = "cue-tenant:";
/// The SAN URI value naming the default tenant.
pub const DEFAULT_SAN: &str = "_default";
/// Most tenants one certificate may name.
pub const MAX_SCOPE_TENANTS: usize = 1024;

/// Which tenants an edge carries (when it does not carry them all).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// The default tenant is among them.
    pub default: bool,
    /// Named tenants.
    pub tenants: BTreeSet<String>,
}

impl Scope {
    /// True when `tenant` (`None`: the default tenant) is carried.
    pub fn carries(&self, tenant: Option<&str>) -> bool {
        match tenant {
            None => self.default,
            Some(t) => self.tenants.contains(t),
        }
    }

    /// True when `event`'s tenant is carried.
    pub fn carries_event(&self, event: &EventName) -> bool {
        self.carries(event.tenant())
    }

    /// The tenants for a log line: `acme, brand-b, (default)`.
    pub fn describe(&self) -> String {
        let mut v: Vec<&str> = self.tenants.iter().map(String::as_str).collect();
        if self.default {
            v.push("(default)");
        }
        v.join(", ")
    }
}

/// Why a certificate's tenants could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not a DER X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    BadCertificate(String),
    /// A `cue-tenant:` URI that names no tenant.
    #[error("SAN URI {0:?} does not name a tenant (1-32 chars of [a-z0-9-], or _default)")]
    BadTenant(String),
    /// More than [`MAX_SCOPE_TENANTS`] tenants.
    #[error("certificate names more than {MAX_SCOPE_TENANTS} tenants")]
    TooMany,
}

/// The tenants the DER certificate `der` names (`Ok(None)`: it names none, so it carries every
/// tenant).
pub fn scope_of_cert(der: &[u8]) -> Result<Option<Scope>, ScopeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| ScopeError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| ScopeError::BadCertificate(e.to_string()))?;
    let uris = san.iter().flat_map(|s| {
        s.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
    });
    scope_of_uris(uris)
}

/// The tenants a certificate's SAN URIs name (`Ok(None)`: none of them is a `cue-tenant:`).
pub fn scope_of_uris<'a>(
    uris: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Scope>, ScopeError> {
    let mut scope: Option<Scope> = None;
    for u in uris {
        let Some(t) = u.strip_prefix(SAN_PREFIX) else {
            continue;
        };
        let s = scope.get_or_insert_with(Scope::default);
        if t == DEFAULT_SAN {
            s.default = true;
        } else if valid_tenant(t) {
            s.tenants.insert(t.to_string());
            if s.tenants.len() > MAX_SCOPE_TENANTS {
                return Err(ScopeError::TooMany);
            }
        } else {
            return Err(ScopeError::BadTenant(u.to_string()));
        }
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_the_tenants_and_none_means_all() {
        assert_eq!(scope_of_uris(["https://x.example"]), Ok(None));
        let s = scope_of_uris(["cue-tenant:acme", "cue-tenant:_default", "spiffe://x"])
            .unwrap()
            .unwrap();
        assert!(s.carries(Some("acme")) && s.carries(None) && !s.carries(Some("b")));
        let a = EventName::qualify(Some("acme"), "fight").unwrap();
        let b = EventName::qualify(Some("b"), "fight").unwrap();
        assert!(s.carries_event(&a) && !s.carries_event(&b));
        let only = scope_of_uris(["cue-tenant:b"]).unwrap().unwrap();
        assert!(!only.carries(None));
        assert_eq!(s.describe(), "acme, (default)");
        for bad in [
            "cue-tenant:",
            "cue-tenant:Acme",
            "cue-tenant:a/b",
            "cue-tenant:default_",
        ] {
            assert!(
                matches!(scope_of_uris([bad]), Err(ScopeError::BadTenant(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_certificate_is_read_for_its_tenant_uris() {
        let mut p =
            rcgen::CertificateParams::new(vec!["edge-1.partner.example".to_string()]).unwrap();
        p.subject_alt_names
            .push(rcgen::SanType::URI("cue-tenant:acme".try_into().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let s = scope_of_cert(cert.der()).unwrap().unwrap();
        assert_eq!(s.tenants.iter().collect::<Vec<_>>(), ["acme"]);
        assert!(!s.default);
        let plain = rcgen::CertificateParams::new(vec!["e.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(scope_of_cert(plain.der()), Ok(None));
        assert!(matches!(
            scope_of_cert(b"not a cert"),
            Err(ScopeError::BadCertificate(_))
        ));
    }
}
