//! Where deliveries may go (SSRF guard): `https://` only, or `http://` to a loopback address
//! when the server runs with `--webhooks-allow-loopback`; the host's addresses must all be
//! public: private (10/8, 172.16/12, 192.168/16, fc00::/7), loopback (unless allowed),
//! link-local (169.254/16 with the cloud metadata address, fe80::/10), unspecified,
//! multicast, broadcast, 0/8 and 100.64/10 are refused. Checked at `Create` and again at every
//! delivery, through [`GuardedResolver`] (DNS can change between the two).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

use crate::error::{Error, Result};

/// Why a destination address is refused; `None` when it may be called.
pub fn refused(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4, allow_loopback),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_v4(v4, allow_loopback),
            None => refused_v6(v6, allow_loopback),
        },
    }
}

fn refused_v4(ip: Ipv4Addr, allow_loopback: bool) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        return (!allow_loopback)
            .then_some("a loopback address (only with --webhooks-allow-loopback)");
    }
    if ip.is_unspecified() || o[0] == 0 {
        Some("an unspecified address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address (cloud metadata lives there)")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("a multicast or broadcast address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr, allow_loopback: bool) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        return (!allow_loopback)
            .then_some("a loopback address (only with --webhooks-allow-loopback)");
    }
    if ip.is_unspecified() {
        Some("an unspecified address")
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfec0 {
        Some("a private address")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// The URL's form: parses, `https`, or `http` only to a loopback host with the flag; no
/// credentials; an IP literal is checked here (a name is checked when it is resolved).
pub fn check_form(url: &str, allow_loopback: bool) -> Result<Url> {
    let bad = |m: String| Error::invalid("url", m);
    if url.len() > 2048 {
        return Err(bad("longer than 2048 characters".into()));
    }
    let u = Url::parse(url).map_err(|e| bad(format!("not a URL ({e})")))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("must not carry credentials".into()));
    }
    let host = u
        .host()
        .ok_or_else(|| bad("needs a host".into()))?
        .to_owned();
    let literal = match &host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(*v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(*v6)),
        url::Host::Domain(_) => None,
    };
    match u.scheme() {
        "https" => {}
        "http" if allow_loopback => {
            let loopback = match (&host, literal) {
                (_, Some(ip)) => ip.is_loopback(),
                (url::Host::Domain(d), None) => d.eq_ignore_ascii_case("localhost"),
                _ => false,
            };
            if !loopback {
                return Err(bad(
                    "http:// only to a loopback address; use https://".into()
                ));
            }
        }
        "http" => return Err(bad("must be https://".into())),
        other => return Err(bad(format!("must be https://, not {other}://"))),
    }
    if let Some(ip) = literal {
        if let Some(why) = refused(ip, allow_loopback) {
            return Err(bad(format!("{ip} is {why}")));
        }
    }
    Ok(u)
}

/// The URL's form and every address its host resolves to (see the module's list).
pub async fn check_url(url: &str, allow_loopback: bool) -> Result<Url> {
    let u = check_form(url, allow_loopback)?;
    if let Some(url::Host::Domain(d)) = u.host() {
        let port = u.port_or_known_default().unwrap_or(443);
        let addrs = resolve_checked(d, port, allow_loopback)
            .await
            .map_err(|m| Error::invalid("url", m))?;
        if u.scheme() == "http" && !addrs.iter().all(|a| a.ip().is_loopback()) {
            return Err(Error::invalid(
                "url",
                format!("http:// only to a loopback address; {d} is not one"),
            ));
        }
    }
    Ok(u)
}

/// The addresses of `host`, refused as a whole when one of them may not be called.
async fn resolve_checked(
    host: &str,
    port: u16,
    allow_loopback: bool,
) -> std::result::Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{host} does not resolve ({e})"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    for a in &addrs {
        if let Some(why) = refused(a.ip(), allow_loopback) {
            return Err(format!("{host} resolves to {}, {why}", a.ip()));
        }
    }
    Ok(addrs)
}

/// The delivery client's resolver: the system's, refusing names that resolve to an address
/// [`refused`] names, so a name that moved to a private address is never called.
pub struct GuardedResolver {
    pub allow_loopback: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve_checked(&host, 0, allow).await?;
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_and_message(r: Result<Url>) -> String {
        match r {
            Err(Error::Invalid { field, message }) => format!("{field}: {message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn private_loopback_link_local_and_plain_http_are_refused() {
        for (url, allow) in [
            ("http://example.invalid/hook", false),
            ("http://93.184.216.34/hook", true),
            ("https://10.0.0.1/", false),
            ("https://172.16.5.4/", false),
            ("https://192.168.1.1/", false),
            ("https://169.254.169.254/latest/meta-data", false),
            ("https://[::1]/", false),
            ("https://127.0.0.1/", false),
            ("https://[fd00::1]/", false),
            ("https://[fe80::1]/", false),
            ("https://[::ffff:10.0.0.1]/", false),
            ("https://0.0.0.0/", false),
            ("https://224.0.0.1/", false),
            ("https://100.64.0.1/", false),
            ("ftp://example.invalid/", false),
            ("https://user:pw@example.invalid/", false),
            ("not a url", false),
        ] {
            let m = field_and_message(check_url(url, allow).await);
            assert!(m.starts_with("url: "), "{url}: {m}");
        }
        // The metadata address is named as link-local.
        let m = field_and_message(check_url("https://169.254.169.254/", true).await);
        assert!(m.contains("link-local"), "{m}");
    }

    #[tokio::test]
    async fn loopback_only_with_the_flag_and_public_addresses_pass() {
        check_url("http://127.0.0.1:9/hook", true).await.unwrap();
        check_url("https://[::1]/", true).await.unwrap();
        check_url("http://localhost:9/", true).await.unwrap();
        check_url("https://93.184.216.34/hook", false)
            .await
            .unwrap();
        assert_eq!(refused("8.8.8.8".parse().unwrap(), false), None);
        assert_eq!(refused("2606:4700::1111".parse().unwrap(), false), None);
        assert!(refused("::".parse().unwrap(), true).is_some());
    }
}
