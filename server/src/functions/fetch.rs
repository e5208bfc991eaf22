//! `fetch` for functions: only to allowlisted hosts, no redirects followed (each hop would
//! need its own check), bodies capped both ways, http and https only.

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
