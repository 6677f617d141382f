//! The HTTP client for the written questions API: URLs in, decoded pages out, with the retry
//! policy (timeouts, backoff with jitter, `Retry-After`, a cap) applied to every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use reqwest::StatusCode;
use tokio::sync::Semaphore;
use url::Url;

use crate::config::FetchConfig;
use crate::parse::api::{self, ApiItem, PageError, RawListPage};
use crate::shutdown::Shutdown;

use super::FetchError;

pub const LIST_PATH: &str = "/api/writtenquestions/questions";

/// Which date a list query filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateField {
    Answered,
    Corrected,
}

impl DateField {
    pub fn name(self) -> &'static str {
        match self {
            DateField::Answered => "answered",
            DateField::Corrected => "corrected",
        }
    }
}

/// One list query: a date range on one field, plus the configured filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub field: DateField,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` failed: exponential, capped, with
    /// 50-100% jitter so that many clients do not retry in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_backoff);
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Counters shared with the cycle report and, later, metrics.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
}

pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    house: String,
    answering_bodies: Vec<u32>,
    page_size: u32,
    retry: RetryPolicy,
    permits: Semaphore,
    concurrency: usize,
    pub stats: Arc<ClientStats>,
    shutdown: Shutdown,
}

/// A failed attempt, and whether it is worth another.
enum AttemptError {
    Retry { why: String, wait: Option<Duration> },
    Fatal(FetchError),
}

impl ApiClient {
    pub fn new(config: &FetchConfig, shutdown: Shutdown) -> Result<ApiClient, FetchError> {
        let base = parse_base_url(&config.base_url)?;
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
            .read_timeout(Duration::from_secs(config.read_timeout_secs))
            .gzip(true)
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(ApiClient {
            http,
            base,
            house: config.house.clone(),
            answering_bodies: config.answering_bodies.clone(),
            page_size: config.page_size.max(1),
            retry: RetryPolicy {
                max_attempts: config.max_attempts.max(1),
                initial_backoff: Duration::from_millis(config.initial_backoff_ms),
                max_backoff: Duration::from_secs(config.max_backoff_secs),
                max_retry_after: Duration::from_secs(config.max_retry_after_secs),
            },
            permits: Semaphore::new(config.max_concurrent_requests.max(1) as usize),
            concurrency: config.max_concurrent_requests.max(1) as usize,
            stats: Arc::new(ClientStats::default()),
            shutdown,
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Requests allowed in flight at once.
    pub fn max_concurrent(&self) -> usize {
        self.concurrency
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The URL of one list page.
    pub fn list_url(&self, query: &ListQuery, skip: u64) -> Url {
        let mut url = self.base.clone();
        url.set_path(LIST_PATH);
        {
            let mut q = url.query_pairs_mut();
            let (from, to) = match query.field {
                DateField::Answered => ("answeredWhenFrom", "answeredWhenTo"),
                DateField::Corrected => ("correctedWhenFrom", "correctedWhenTo"),
            };
            q.append_pair(from, &query.from.format("%Y-%m-%d").to_string());
            q.append_pair(to, &query.to.format("%Y-%m-%d").to_string());
            if !self.house.is_empty() {
                q.append_pair("house", &self.house);
            }
            for body in &self.answering_bodies {
                q.append_pair("answeringBodies", &body.to_string());
            }
            q.append_pair("expandMember", "true");
            q.append_pair("skip", &skip.to_string());
            q.append_pair("take", &self.page_size.to_string());
        }
        url
    }

    pub fn record_url(&self, id: u64) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{LIST_PATH}/{id}"));
        url.query_pairs_mut().append_pair("expandMember", "true");
        url
    }

    /// A page of the list endpoint and a digest of its body. When the digest equals `previous`
    /// (the digest of this page as handled before), the body is not decoded at all: the page
    /// is `None`.
    pub async fn list_page(
        &self,
        query: &ListQuery,
        skip: u64,
        previous: Option<&[u8; 16]>,
    ) -> Result<(Url, [u8; 16], Option<RawListPage>), FetchError> {
        let url = self.list_url(query, skip);
        let (digest, page) = self
            .get(&url, |body| {
                let digest = body_digest(body);
                if previous == Some(&digest) {
                    return Ok((digest, None));
                }
                api::split_list_page(body).map(|page| (digest, Some(page)))
            })
            .await?;
        let Some(page) = page else {
            return Ok((url, digest, None));
        };
        if page.total_results.is_none() {
            return Err(FetchError::MalformedPage {
                url: url.to_string(),
                why: "no totalResults in the response".to_string(),
            });
        }
        Ok((url, digest, Some(page)))
    }

    /// The whole record by id (the list endpoint may cut long texts short).
    pub async fn record(&self, id: u64) -> Result<(Url, ApiItem), FetchError> {
        let url = self.record_url(id);
        let item = self.get(&url, api::decode_single).await?;
        Ok((url, item))
    }

    async fn get<T>(
        &self,
        url: &Url,
        decode: impl Fn(&[u8]) -> Result<T, PageError>,
    ) -> Result<T, FetchError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| FetchError::Interrupted)?;
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                self.attempt(url, &decode).await
            };
            let (why, wait) = match outcome {
                Ok(value) => return Ok(value),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Retry { why, wait }) => (why, wait),
            };
            if attempt >= self.retry.max_attempts {
                tracing::error!(url = %url, attempts = attempt, error = %why, "giving up on request");
                return Err(FetchError::GaveUp {
                    url: url.to_string(),
                    attempts: attempt,
                    last: why,
                });
            }
            let wait = wait.unwrap_or_else(|| self.retry.backoff(attempt));
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(url = %url, attempt, wait_ms = wait.as_millis() as u64, error = %why, "request failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.requested() => return Err(FetchError::Interrupted),
            }
        }
    }

    async fn attempt<T>(
        &self,
        url: &Url,
        decode: &impl Fn(&[u8]) -> Result<T, PageError>,
    ) -> Result<T, AttemptError> {
        let retry = |why: String| AttemptError::Retry { why, wait: None };
        let response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| retry(describe(&e)))?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(response.headers()).map(|w| w.min(self.retry.max_retry_after));
            return Err(AttemptError::Retry {
                why: "429 Too Many Requests".to_string(),
                wait,
            });
        }
        if status.is_server_error() {
            return Err(retry(format!("server error {status}")));
        }
        if !status.is_success() {
            return Err(AttemptError::Fatal(FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            }));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| retry(format!("reading the body: {}", describe(&e))))?;
        match decode(&body) {
            Ok(value) => Ok(value),
            Err(PageError::Truncated(why)) => Err(retry(format!(
                "truncated body ({} bytes): {why}",
                body.len()
            ))),
            Err(PageError::Malformed(why)) => Err(AttemptError::Fatal(FetchError::MalformedPage {
                url: url.to_string(),
                why,
            })),
        }
    }
}

/// A reqwest error with its causes, on one line (reqwest's Display alone hides the cause).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// What a response body is known by between cycles: a 128-bit hash of its bytes (not a defence
/// against a hostile server, which could send anything anyway; an accidental collision is out
/// of reach).
pub fn body_digest(body: &[u8]) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(body).to_be_bytes()
}

pub fn parse_base_url(text: &str) -> Result<Url, FetchError> {
    let url = Url::parse(text).map_err(|e| FetchError::BadBaseUrl {
        url: text.to_string(),
        why: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(FetchError::BadBaseUrl {
            url: text.to_string(),
            why: "must be an http:// or https:// URL with a host".to_string(),
        });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(60),
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let tenth = policy.backoff(10);
            assert!(tenth >= Duration::from_millis(500) && tenth <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("ftp://example.org").is_err());
        assert!(parse_base_url("not a url").is_err());
    }
}
