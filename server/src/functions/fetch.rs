//! `fetch` for functions: only to allowlisted hosts, no redirects followed (each hop would
//! need its own check), bodies capped both ways, http and https only. An allowlisted *name*
//! must resolve to public addresses: a name that resolves to loopback, private, link-local
//! or other special-purpose addresses is refused after resolution (DNS rebinding, HOSTILE
//! ST-05). Internal services are reached by allowlisting their IP literal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Deserialize;
use serde_json::{Value, json};

use super::engine::HostError;

/// Largest response body a function may read.
const MAX_BODY: usize = 5 << 20;

pub struct Fetcher {
    client: reqwest::Client,
    allow: Vec<String>,
}

#[derive(Deserialize)]
struct Request {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
}

fn refuse(status: u16, code: &str, message: impl Into<String>) -> HostError {
    HostError {
        status,
        code: code.into(),
        message: message.into(),
    }
}

impl Fetcher {
    pub fn new(allow: Vec<String>) -> Option<Fetcher> {
        if allow.is_empty() {
            return None;
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(PublicOnly)
            .no_proxy()
            .build()
            .ok()?;
        Some(Fetcher { client, allow })
    }

    /// Whether `host[:port]` is on the allowlist.
    pub fn allowed(&self, host: &str, port: Option<u16>) -> bool {
        let with_port = port.map(|p| format!("{host}:{p}"));
        self.allow.iter().any(|a| {
            if let Some(suffix) = a.strip_prefix("*.") {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            } else {
                a == host || with_port.as_deref() == Some(a.as_str())
            }
        })
    }

    pub async fn fetch(&self, args: &str) -> Result<Value, HostError> {
        let req: Request = serde_json::from_str(args)
            .map_err(|e| refuse(400, "bad_request", format!("fetch: {e}")))?;
        let url = url::Url::parse(&req.url)
            .map_err(|_| refuse(400, "bad_request", "fetch: not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(403, "forbidden", "fetch: only http and https"));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.allowed(&host, url.port()) {
            return Err(refuse(
                403,
                "forbidden",
                format!("fetch: `{host}` is not in functions.fetch_allow"),
            ));
        }
        let method = reqwest::Method::from_bytes(req.method.as_deref().unwrap_or("GET").as_bytes())
            .map_err(|_| refuse(400, "bad_request", "fetch: bad method"))?;
        let mut builder = self.client.request(method, url);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let mut response = builder
            .send()
            .await
            .map_err(|_| refuse(502, "bad_gateway", "fetch: the request failed"))?;
        let status = response.status().as_u16();
        let headers: serde_json::Map<String, Value> = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), Value::String(v.to_str().ok()?.to_owned()))))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| refuse(502, "bad_gateway", "fetch: reading the response failed"))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(refuse(
                    413,
                    "payload_too_large",
                    "fetch: the response exceeds 5 MiB",
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(json!({
            "status": status,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        }))
    }
}

/// Resolves names for `fetch`, keeping only public addresses.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("`{host}` resolves to no public address").into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is a globally routable unicast address.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0xdb8 // documentation
        || first == 0x64 && ip.segments()[1] == 0xff9b) // NAT64 of any IPv4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public}");
        }
    }
}
