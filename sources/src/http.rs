//! HTTP JSON APIs as a source: `GET` page by page, each response's records (at a JSON
//! pointer) written as JSON lines for the JSON reader, so an API's records land in bronze like
//! a file's (raw text columns, unknown fields rescued).
//!
//! Requests are paced to `requests_per_second` and retried on 429, 5xx and connection errors,
//! after the server's `Retry-After` when it gives one, else with exponential backoff. With
//! `since`, the largest value of its field among the records read is what the next run asks
//! for (recorded with the bronze commit by the caller).
//!
//! ```no_run
//! # async fn example(p: &medallion_pipeline::Pipeline, api: &medallion_pipeline::spec::HttpSource) -> Result<(), medallion_sources::http::HttpError> {
//! let mut lines = Vec::new();
//! let fetched = medallion_sources::http::fetch(p, api, None, &mut lines).await?;
//! println!("{} records in {} pages; next run asks after {:?}", fetched.records, fetched.pages, fetched.since);
//! # Ok(()) }
//! ```

use std::io::Write;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use medallion_pipeline::Pipeline;
use medallion_pipeline::spec::{HttpSource, PaginationStyle};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LINK, RETRY_AFTER};
use serde_json::Value;
use tokio::time::Instant;

/// The longest a `Retry-After` is waited for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// An API could not be read: the URL asked, and why (never the secret).
#[derive(Debug, thiserror::Error)]
#[error("{url}: {message}")]
pub struct HttpError {
    pub url: String,
    pub message: String,
}

/// What one run read.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub records: u64,
    pub pages: u64,
    /// The largest `since.field` among the records, or the one given when there were none.
    pub since: Option<Value>,
}

/// Reads every page of `api` (after `since`, with `since` set), writing each record as one
/// JSON line to `out`.
pub async fn fetch(
    pipeline: &Pipeline,
    api: &HttpSource,
    since: Option<&Value>,
    out: &mut impl Write,
) -> Result<Fetched, HttpError> {
    let base = &api.url.value;
    let fail = |url: &str, message: String| HttpError {
        url: url.to_string(),
        message,
    };
    let client = Client::new(pipeline, api).map_err(|m| fail(base, m))?;
    let mut url = reqwest::Url::parse(base).map_err(|e| fail(base, e.to_string()))?;
    {
        let mut query = url.query_pairs_mut();
        query.extend_pairs(&api.params);
        if let (Some(s), Some(value)) = (&api.since, since) {
            query.append_pair(&s.value.param, &param_text(value));
        }
    }
    let pagination = api.pagination.as_ref().map(|p| &p.value);
    let mut page = pagination.and_then(|p| p.start).unwrap_or(1);
    let with_param = |url: &reqwest::Url, name: &str, value: &str| {
        let mut next = url.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != name)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        next.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair(name, value);
        next
    };
    if let Some(p) = pagination.filter(|p| p.style == PaginationStyle::Page) {
        url = with_param(
            &url,
            p.param.as_deref().unwrap_or("page"),
            &page.to_string(),
        );
    }
    let mut fetched = Fetched {
        records: 0,
        pages: 0,
        since: since.cloned(),
    };
    let mut seen_cursors = std::collections::HashSet::new();
    loop {
        let (body, headers) = client.get(&url).await?;
        fetched.pages += 1;
        let pointer = api.records.as_ref().map_or("", |p| p.value.as_str());
        let records = body
            .pointer(pointer)
            .and_then(Value::as_array)
            .ok_or_else(|| fail(url.as_str(), format!("no records array at '{pointer}'")))?;
        for record in records {
            serde_json::to_writer(&mut *out, record)
                .and_then(|_| out.write_all(b"\n").map_err(serde_json::Error::io))
                .map_err(|e| fail(url.as_str(), format!("writing records: {e}")))?;
            if let Some(s) = &api.since {
                let value = record.get(&s.value.field).filter(|v| !v.is_null());
                if let Some(v) =
                    value.filter(|v| fetched.since.as_ref().is_none_or(|m| later(v, m)))
                {
                    fetched.since = Some(v.clone());
                }
            }
        }
        fetched.records += records.len() as u64;
        let next = match pagination {
            None => None,
            Some(p) => match p.style {
                PaginationStyle::Page if records.is_empty() => None,
                PaginationStyle::Page => {
                    page += 1;
                    let name = p.param.as_deref().unwrap_or("page");
                    Some(with_param(&url, name, &page.to_string()))
                }
                PaginationStyle::Cursor => {
                    let next = p.next.as_deref().and_then(|n| body.pointer(n));
                    match next.filter(|c| !c.is_null() && c.as_str() != Some("")) {
                        None => None,
                        Some(cursor) => {
                            let cursor = param_text(cursor);
                            if !seen_cursors.insert(cursor.clone()) {
                                return Err(fail(
                                    url.as_str(),
                                    format!("the API gave the cursor '{cursor}' twice"),
                                ));
                            }
                            let name = p.param.as_deref().unwrap_or("cursor");
                            Some(with_param(&url, name, &cursor))
                        }
                    }
                }
                PaginationStyle::Link => next_link(&headers)
                    .map(|l| url.join(&l).map_err(|e| fail(url.as_str(), e.to_string())))
                    .transpose()?,
            },
        };
        match next {
            Some(n) => url = n,
            None => return Ok(fetched),
        }
    }
}

/// A JSON value as a query parameter: a string as is, anything else as JSON.
fn param_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `a` comes after `b`: numbers as numbers, anything else as text.
fn later(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x > y,
        _ => param_text(a) > param_text(b),
    }
}

/// The `rel="next"` URL of a `Link` header (RFC 8288).
fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.split_once(';')?;
            let next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            next.then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        })
}

/// The server's `Retry-After`: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Requests with the source's headers and secret, paced and retried.
struct Client<'a> {
    http: reqwest::Client,
    api: &'a HttpSource,
    headers: HeaderMap,
    pause: Duration,
    next_at: std::sync::Mutex<Instant>,
}

impl<'a> Client<'a> {
    fn new(pipeline: &Pipeline, api: &'a HttpSource) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &api.headers {
            headers.insert(
                reqwest::header::HeaderName::try_from(name.as_str())
                    .map_err(|e| format!("header {name}: {e}"))?,
                value.parse().map_err(|e| format!("header {name}: {e}"))?,
            );
        }
        if let Some(auth) = &api.auth {
            let auth = &auth.value;
            let token = crate::read_secret(
                pipeline,
                "auth.token",
                auth.token_env.as_ref().map(|v| v.value.as_str()),
                auth.token_file.as_ref().map(|f| f.value.as_str()),
            )?
            .unwrap_or_default();
            let name = auth.header.as_deref().unwrap_or("Authorization");
            let mut value: reqwest::header::HeaderValue =
                format!("{}{token}", auth.prefix.as_deref().unwrap_or_default())
                    .parse()
                    .map_err(|_| "the token is not a valid header value".to_string())?;
            value.set_sensitive(true);
            headers.insert(
                reqwest::header::HeaderName::try_from(name)
                    .map_err(|e| format!("auth.header {name}: {e}"))?,
                value,
            );
        }
        let rate = api
            .requests_per_second
            .as_ref()
            .map_or(HttpSource::DEFAULT_REQUESTS_PER_SECOND, |r| r.value);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            api,
            headers,
            pause: Duration::from_secs_f64(1.0 / rate),
            next_at: std::sync::Mutex::new(Instant::now()),
        })
    }

    /// Waits for the request's turn under the rate limit.
    async fn turn(&self) {
        let at = {
            let mut next = self.next_at.lock().expect("rate limit");
            let at = (*next).max(Instant::now());
            *next = at + self.pause;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// `GET url` as JSON, retried on 429, 5xx and connection errors.
    async fn get(&self, url: &reqwest::Url) -> Result<(Value, HeaderMap), HttpError> {
        let attempts = self
            .api
            .max_attempts
            .as_ref()
            .map_or(HttpSource::DEFAULT_MAX_ATTEMPTS, |a| a.value);
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(60))
            .with_jitter()
            .without_max_times()
            .build();
        let fail = |message: String| HttpError {
            url: url.to_string(),
            message,
        };
        let mut attempt = 1;
        loop {
            self.turn().await;
            let sent = self
                .http
                .get(url.clone())
                .headers(self.headers.clone())
                .send()
                .await;
            let (why, wait) = match sent {
                Ok(response) if response.status().is_success() => {
                    let headers = response.headers().clone();
                    let body = response
                        .bytes()
                        .await
                        .map_err(|e| fail(format!("reading the response: {e}")))?;
                    let json = serde_json::from_slice(&body)
                        .map_err(|e| fail(format!("the response is not JSON: {e}")))?;
                    return Ok((json, headers));
                }
                Ok(response)
                    if response.status() == StatusCode::TOO_MANY_REQUESTS
                        || response.status().is_server_error() =>
                {
                    let wait = retry_after(response.headers());
                    (format!("HTTP {}", response.status()), wait)
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let body: String = body.chars().take(300).collect();
                    return Err(fail(format!("HTTP {status}: {body}")));
                }
                Err(e) => (format!("{e}"), None),
            };
            if attempt >= attempts {
                return Err(fail(format!("{why}, after {attempt} attempts")));
            }
            let wait = wait.unwrap_or_else(|| backoff.next().unwrap_or(Duration::from_secs(60)));
            tracing::warn!(%url, attempt, error = %why, wait_ms = wait.as_millis() as u64, "API request failed; trying again");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_give_the_next_page() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            "<https://api/x?page=1>; rel=\"prev\", <https://api/x?page=3>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("https://api/x?page=3"));
        headers.insert(
            LINK,
            "<https://api/x?page=1>; rel=\"prev\"".parse().unwrap(),
        );
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_bounded() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        headers.insert(RETRY_AFTER, httpdate::fmt_http_date(soon).parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
    }

    #[test]
    fn since_values_compare_as_numbers_or_text() {
        use serde_json::json;
        assert!(later(&json!(10), &json!(9)));
        assert!(later(
            &json!("2024-02-01T00:00:00Z"),
            &json!("2024-01-31T23:59:59Z")
        ));
        assert!(!later(&json!(9.5), &json!(10)));
    }
}
