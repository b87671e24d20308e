//! Where the client may connect: the administrator's allow-list of IMS and AEP endpoints.
//!
//! A tenant's credentials Secret may choose an endpoint (`imsUrl`, `platformUrl`) only from this
//! list, so an object and a Secret in one namespace cannot point a process that serves every
//! tenant at an internal service. Rules: `https` only, except `http` to a loopback IP literal that
//! the administrator listed explicitly (the local emulator); no user info; hosts compared exactly
//! (scheme, host, port), so `localhost` or a DNS name that resolves to loopback is not loopback.
//! Every check happens before a connection is made.

use std::fmt;
use std::net::IpAddr;

use url::Url;

/// One allowed origin.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn of(url: &Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Why an endpoint is refused. The message names the rule, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not an absolute http(s) URL with a host, or it carries user info, a query or a fragment.
    #[error("must be an absolute https URL without user info, query or fragment")]
    Malformed,
    /// `http` to anything but a loopback IP literal.
    #[error("must use https (plain http is allowed only to a loopback IP address the administrator lists)")]
    NotHttps,
    /// Not on the administrator's list.
    #[error(
        "is not an allowed endpoint (allowed: {allowed}); endpoints are chosen by the operator's administrator (--allowed-endpoint)"
    )]
    NotAllowed {
        /// The allowed origins, for the message.
        allowed: String,
    },
}

/// The allow-list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    allowed: Vec<Origin>,
}

/// Whether `url` is `http` to a loopback IP literal.
fn loopback_http(url: &Url) -> bool {
    url.scheme() == "http"
        && match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
            _ => false,
        }
}

/// Shape rules that hold for every endpoint, listed or not.
fn well_formed(url: &Url) -> Result<(), EndpointError> {
    if url.cannot_be_a_base()
        || url.host_str().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(EndpointError::Malformed);
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback_http(url) => Ok(()),
        "http" => Err(EndpointError::NotHttps),
        _ => Err(EndpointError::Malformed),
    }
}

impl EndpointPolicy {
    /// A policy allowing exactly these endpoints (their origins); each must itself be well formed.
    pub fn new<'a>(endpoints: impl IntoIterator<Item = &'a Url>) -> Result<Self, (String, EndpointError)> {
        let mut allowed = Vec::new();
        for url in endpoints {
            well_formed(url).map_err(|e| (url.to_string(), e))?;
            let origin = Origin::of(url).ok_or_else(|| (url.to_string(), EndpointError::Malformed))?;
            if !allowed.contains(&origin) {
                allowed.push(origin);
            }
        }
        Ok(EndpointPolicy { allowed })
    }

    /// Whether the client may send a request to `url` (its query is the request's own).
    pub fn check_request(&self, url: &Url) -> Result<(), EndpointError> {
        let mut base = url.clone();
        base.set_query(None);
        base.set_fragment(None);
        self.check(&base)
    }

    /// Whether the client may connect to the endpoint `url`.
    pub fn check(&self, url: &Url) -> Result<(), EndpointError> {
        well_formed(url)?;
        let origin = Origin::of(url).ok_or(EndpointError::Malformed)?;
        if self.allowed.contains(&origin) {
            return Ok(());
        }
        Err(EndpointError::NotAllowed {
            allowed: self
                .allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    //! These tests send nothing: every check is on URLs only.
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    fn policy() -> EndpointPolicy {
        EndpointPolicy::new(&[
            url("https://platform.adobe.io"),
            url("https://ims-na1.adobelogin.com/"),
            url("http://127.0.0.1:8081/"),
        ])
        .expect("policy")
    }

    #[test]
    fn listed_endpoints_pass() {
        let p = policy();
        for ok in [
            "https://platform.adobe.io",
            "https://platform.adobe.io/",
            "https://PLATFORM.adobe.io:443/prefix/",
            "https://ims-na1.adobelogin.com",
            "http://127.0.0.1:8081",
        ] {
            assert_eq!(p.check(&url(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn plain_http_to_a_non_loopback_host_is_refused_before_any_connection() {
        let p = policy();
        for bad in [
            "http://platform.adobe.io",
            "http://10.0.0.1:8080",
            "http://localhost:8081",
            "http://kubernetes.default.svc",
        ] {
            assert_eq!(p.check(&url(bad)), Err(EndpointError::NotHttps), "{bad}");
        }
    }

    #[test]
    fn hosts_outside_the_list_are_refused() {
        let p = policy();
        for bad in [
            "https://evil.example",
            "https://platform.adobe.io.evil.example",
            "https://platform.adobe.io:8443",
            "https://kubernetes.default.svc:443",
            "http://127.0.0.2:8081",
            "http://127.0.0.1:8082",
            "https://127.0.0.1:8081",
        ] {
            assert!(
                matches!(p.check(&url(bad)), Err(EndpointError::NotAllowed { .. })),
                "{bad}: {:?}",
                p.check(&url(bad))
            );
        }
    }

    #[test]
    fn requests_carry_their_own_query() {
        let p = policy();
        assert_eq!(
            p.check_request(&url("https://platform.adobe.io/data/core/ups/audiences?name=x")),
            Ok(())
        );
        assert!(p.check_request(&url("https://evil.example/data?x=1")).is_err());
    }

    #[test]
    fn malformed_endpoints_are_refused() {
        let p = policy();
        for bad in [
            "https://user:pw@platform.adobe.io",
            "https://platform.adobe.io/?x=1",
            "https://platform.adobe.io/#f",
            "ftp://platform.adobe.io",
            "file:///etc/passwd",
        ] {
            assert_eq!(p.check(&url(bad)), Err(EndpointError::Malformed), "{bad}");
        }
    }

    #[test]
    fn the_administrators_list_itself_must_be_safe() {
        assert!(EndpointPolicy::new(&[url("http://10.1.2.3")]).is_err());
        assert!(EndpointPolicy::new(&[url("http://[::1]:9/")]).is_ok());
    }

    #[test]
    fn the_refusal_names_the_rule_and_the_allowed_list() {
        let msg = policy()
            .check(&url("https://evil.example"))
            .expect_err("refused")
            .to_string();
        assert!(
            msg.contains("not an allowed endpoint") && msg.contains("https://platform.adobe.io:443"),
            "{msg}"
        );
    }
}
