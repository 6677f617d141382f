//! A real HTTP/1.1 server on 127.0.0.1 that imitates the Parliament written questions API from an
//! in-memory dataset, and misbehaves on command.
//!
//! std only: a blocking accept loop on its own thread and one thread per connection, one request
//! per connection (`Connection: close`). Responses are never compressed.
//!
//! Endpoints (GET only; anything else is a JSON 404):
//! - `/api/writtenquestions/questions`: `answeredWhenFrom`/`answeredWhenTo` and
//!   `correctedWhenFrom`/`correctedWhenTo` (YYYY-MM-DD, inclusive, against the first 10 chars of
//!   `dateAnswered` / `dateAnswerCorrected`; records without that date are left out when either
//!   bound is given), `house` (exact, when non-empty), `answeringBodies` (repeatable, matches
//!   `answeringBodyId`), `skip` (0), `take` (20); `expandMember` and unknown parameters are
//!   ignored. Sorted by `dateAnswered` then `id`, both descending. Answers
//!   `{"results":[{"value":..,"links":[..]}..],"totalResults":N}`, N counted before paging.
//! - `/api/writtenquestions/questions/{id}`: `{"value":..,"links":[]}`, or 404 `{"title":"Not Found"}`.
//!
//! Bad query values (not a number, not a date, bad percent-encoding, not UTF-8) and unparseable
//! requests get a 400. Every request that parses is logged, in arrival order, before anything
//! else happens to it; then the first queued fault whose scope matches takes it; then (list
//! endpoint only, and only when answering from the dataset) the `on_list_request` hook runs;
//! then it is answered.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{json, Value};

/// The list endpoint's path; a record is at `LIST_PATH/{id}`.
pub const LIST_PATH: &str = "/api/writtenquestions/questions";

/// Longest request head (request line and headers) read before answering 400.
const MAX_HEAD: usize = 64 * 1024;
/// How long a connection may take to send its request, and to take our answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A hook run with the dataset before each list request is answered.
pub type ListHook = Box<dyn FnMut(&mut Vec<Value>, &RequestLog) + Send>;

/// One way to misbehave, for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Reply with this status and a short JSON body (`{"title":..,"status":..}`).
    Status(u16),
    /// 429 with a `Retry-After: <secs>` header.
    TooManyRequests { retry_after_secs: u64 },
    /// Read the request, send nothing for this long, then close the connection.
    Hang(Duration),
    /// The correct response (status and headers as normal) with its body cut in half at a UTF-8
    /// boundary; `Content-Length` is the cut length, so the HTTP exchange itself is complete.
    TruncatedBody,
    /// Read the request and close the connection without answering.
    Reset,
    /// 200 with body `<html>oops</html>` and `Content-Type: application/json`.
    MalformedBody,
}

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    pub method: String,
    /// The path without the query string, not percent-decoded.
    pub path: String,
    /// Query parameters in order, percent-decoded (`+` is a space).
    pub query: Vec<(String, String)>,
    /// Headers in order, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RequestLog {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a (repeatable) query parameter, in order.
    pub fn params(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of a header; `name` is matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a request to the list endpoint.
    pub fn is_list(&self) -> bool {
        self.path == LIST_PATH || self.path == format!("{LIST_PATH}/")
    }

    /// The id asked for, if this is a request to the by-id endpoint.
    pub fn record_id(&self) -> Option<u64> {
        self.path
            .strip_prefix(LIST_PATH)?
            .strip_prefix('/')?
            .parse()
            .ok()
    }
}

/// Which requests a queued fault may take.
enum Scope {
    Any,
    /// Requests whose path (without the query) contains this.
    PathContains(String),
    /// List requests only.
    List,
}

impl Scope {
    fn matches(&self, request: &RequestLog) -> bool {
        match self {
            Scope::Any => true,
            Scope::PathContains(s) => request.path.contains(s.as_str()),
            Scope::List => request.is_list(),
        }
    }
}

struct State {
    records: Vec<Value>,
    faults: VecDeque<(Scope, Fault)>,
    /// Faults for requests that follow one served normally (see `fail_between_successes`).
    between_successes: VecDeque<Fault>,
    /// Whether the last request was served without a fault.
    last_served: bool,
    requests: Vec<RequestLog>,
    truncate_over: Option<usize>,
    list_hook: Option<ListHook>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    /// A panic elsewhere (say in a test's hook) must not take the server down with it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The test server. Dropping it stops the accept loop (connections being served finish on their
/// own threads).
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts serving `records` on 127.0.0.1 on a free port.
    pub fn start(records: Vec<Value>) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of the listener");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                records,
                faults: VecDeque::new(),
                between_successes: VecDeque::new(),
                last_served: false,
                requests: Vec::new(),
                truncate_over: None,
                list_hook: None,
            }),
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("api-server-{}", addr.port()))
            .spawn(move || accept_loop(listener, for_thread))
            .expect("spawn the accept thread");
        ApiServer {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the whole dataset.
    pub fn set_records(&self, records: Vec<Value>) {
        self.shared.lock().records = records;
    }

    /// Replaces the record with the same `"id"`, or adds it.
    pub fn upsert(&self, record: Value) {
        let mut state = self.shared.lock();
        let id = record.get("id").cloned();
        let existing = id
            .as_ref()
            .and_then(|id| state.records.iter().position(|r| r.get("id") == Some(id)));
        match existing {
            Some(i) => state.records[i] = record,
            None => state.records.push(record),
        }
    }

    /// A copy of the current dataset.
    pub fn records(&self) -> Vec<Value> {
        self.shared.lock().records.clone()
    }

    /// Queues a fault for the next request, whatever its path. Faults queue first in, first
    /// out; each takes exactly one request.
    pub fn push_fault(&self, fault: Fault) {
        self.shared.lock().faults.push_back((Scope::Any, fault));
    }

    /// Queues a fault for the next request whose path (without the query) contains
    /// `path_contains`: `"/questions/"` takes only by-id requests, `"/questions/1700001"` only
    /// that record's. A request takes the first queued fault whose scope it matches.
    pub fn push_fault_for(&self, path_contains: &str, fault: Fault) {
        let scope = Scope::PathContains(path_contains.to_string());
        self.shared.lock().faults.push_back((scope, fault));
    }

    /// Queues a fault for the next list request (the list path is a prefix of every by-id path,
    /// so `push_fault_for` cannot say this).
    pub fn push_list_fault(&self, fault: Fault) {
        self.shared.lock().faults.push_back((Scope::List, fault));
    }

    /// Queues `faults` to fire one at a time, each on the first request after one that was
    /// served normally: failures as often as can be, yet always between successes, so retries
    /// meet a healthy server as they would in life, whatever the client's speed. Queued faults
    /// (`push_fault`...) take precedence.
    pub fn fail_between_successes(&self, faults: Vec<Fault>) {
        self.shared.lock().between_successes.extend(faults);
    }

    /// How many queued faults (of both kinds) have not fired yet.
    pub fn pending_faults(&self) -> usize {
        let state = self.shared.lock();
        state.faults.len() + state.between_successes.len()
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.lock().requests.clone()
    }

    /// On the list endpoint, `questionText` and `answerText` longer than `n` chars become their
    /// first `n` chars followed by `...`. `None` (the default) serves them whole. The by-id
    /// endpoint always serves them whole.
    pub fn set_truncate_list_text_over(&self, n: Option<usize>) {
        self.shared.lock().truncate_over = n;
    }

    /// Runs `hook` with the dataset (mutable) and the request before each list request is
    /// answered from the dataset: normally, or cut short by `Fault::TruncatedBody`; not for
    /// requests taken by other faults or rejected with 400. Replaces any earlier hook. The hook
    /// runs under the server's lock: it must not call back into this `ApiServer`, and while it
    /// runs (say, sleeping to make pages slow) every other request and accessor waits for it.
    pub fn on_list_request(&self, hook: ListHook) {
        self.shared.lock().list_hook = Some(hook);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept. If that fails, leave the thread to itself rather than hang.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(handle) = self.accept_thread.take() {
            if woke {
                let _ = handle.join();
            }
        }
    }
}

/// Reads one fixture file from `tests/fixtures/api/` as a JSON value (panics if it is missing
/// or not JSON: that is a broken test, not a server error).
pub fn fixture(name: &str) -> Value {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The records of a fixture that is a JSON array (`questions.json`, `holding.json`, ...).
pub fn fixture_records(name: &str) -> Vec<Value> {
    match fixture(name) {
        Value::Array(records) => records,
        other => panic!("fixture {name} is not a JSON array: {other:.80}"),
    }
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/api")
        .join(name)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else {
            // Transient accept errors (e.g. the peer gave up already): keep serving.
            continue;
        };
        let shared = Arc::clone(&shared);
        // If a thread cannot be spawned the connection is dropped, which a test sees as a reset.
        let _ = thread::Builder::new()
            .name("api-server-conn".into())
            .spawn(move || serve(stream, &shared));
    }
}

/// What to send back.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, value: &Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "application/json; charset=utf-8".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    fn error(status: u16, detail: &str) -> Response {
        Response::json(
            status,
            &json!({"title": reason(status), "status": status, "detail": detail}),
        )
    }

    fn not_found() -> Response {
        Response::json(404, &json!({"title": "Not Found"}))
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let head = match read_head(&mut stream) {
        Ok(Some(head)) => head,
        // The peer closed or timed out before sending a whole request (our own wake-up
        // connection on shutdown lands here too).
        Ok(None) | Err(_) => return,
    };
    let request = match parse_head(&head) {
        Ok(request) => request,
        Err(why) => {
            let _ = write_response(&mut stream, &Response::error(400, &why));
            return;
        }
    };
    let fault = {
        let mut state = shared.lock();
        state.requests.push(request.clone());
        let at = state
            .faults
            .iter()
            .position(|(scope, _)| scope.matches(&request));
        let fault = match at.and_then(|i| state.faults.remove(i)) {
            Some((_, fault)) => Some(fault),
            None if state.last_served => state.between_successes.pop_front(),
            None => None,
        };
        state.last_served = fault.is_none();
        fault
    };
    let response = match fault {
        None => answer(&request, shared),
        Some(Fault::Status(status)) => Response::error(status, "injected fault"),
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let mut r = Response::error(429, "injected fault: rate limited");
            r.headers
                .push(("Retry-After", retry_after_secs.to_string()));
            r
        }
        Some(Fault::Hang(how_long)) => {
            thread::sleep(how_long);
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        Some(Fault::Reset) => {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        Some(Fault::MalformedBody) => Response {
            status: 200,
            headers: vec![("Content-Type", "application/json".into())],
            body: b"<html>oops</html>".to_vec(),
        },
        Some(Fault::TruncatedBody) => {
            let mut r = answer(&request, shared);
            let mut cut = r.body.len() / 2;
            // The bodies are UTF-8 JSON: cut between characters so the client sees an early end
            // of JSON rather than invalid UTF-8.
            while cut > 0 && (r.body[cut] & 0b1100_0000) == 0b1000_0000 {
                cut -= 1;
            }
            r.body.truncate(cut);
            r
        }
    };
    let _ = write_response(&mut stream, &response);
}

/// Reads up to the blank line that ends the request head; discards a body if one is announced.
/// `Ok(None)` when the peer closed first.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(&buf) {
            let head = buf[..end].to_vec();
            let rest = buf.len() - end;
            if let Some(len) = content_length(&head) {
                // Drain the body so closing the socket does not reset the connection.
                let mut left = len.saturating_sub(rest as u64);
                while left > 0 {
                    let want = chunk
                        .len()
                        .min(usize::try_from(left).unwrap_or(chunk.len()));
                    match stream.read(&mut chunk[..want])? {
                        0 => break,
                        n => left -= n as u64,
                    }
                }
            }
            return Ok(Some(head));
        }
        if buf.len() > MAX_HEAD {
            // Treated like a malformed request by the caller: no blank line in sight.
            return Ok(Some(buf));
        }
        match stream.read(&mut chunk)? {
            0 => return Ok(None),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The index just past the head's blank line (CRLF CRLF, or bare LF LF).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn content_length(head: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(head).ok()?;
    text.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

fn parse_head(head: &[u8]) -> Result<RequestLog, String> {
    if head_end(head).is_none() {
        return Err("request head too long or unterminated".into());
    }
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8".to_string())?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported version {version:?}"));
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("bad header name {name:?}"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    // Absolute form (`http://host/path?q`), as sent to proxies, is accepted too.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.split('#').next().unwrap_or(path);
    let query = query.split('#').next().unwrap_or(query);
    Ok(RequestLog {
        method: method.to_string(),
        path: path.to_string(),
        query: parse_query(query)?,
        headers,
    })
}

fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; the result must be
/// UTF-8.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// Routes a request that no fault took.
fn answer(request: &RequestLog, shared: &Shared) -> Response {
    if request.method != "GET" {
        return Response::not_found();
    }
    if request.is_list() {
        return match ListParams::from_request(request) {
            Ok(params) => list(request, &params, shared),
            Err(why) => Response::error(400, &why),
        };
    }
    let Some(rest) = request.path.strip_prefix(LIST_PATH) else {
        return Response::not_found();
    };
    let Some(id) = rest.strip_prefix('/').map(|s| s.trim_end_matches('/')) else {
        return Response::not_found();
    };
    if id.is_empty() || id.contains('/') {
        return Response::not_found();
    }
    let Ok(id) = id.parse::<u64>() else {
        return Response::error(400, &format!("{id:?} is not a question id"));
    };
    let state = shared.lock();
    match state.records.iter().find(|r| record_id(r) == Some(id)) {
        Some(record) => Response::json(200, &json!({"value": record, "links": []})),
        None => Response::not_found(),
    }
}

struct ListParams {
    answered: (Option<String>, Option<String>),
    corrected: (Option<String>, Option<String>),
    house: Option<String>,
    bodies: Vec<u64>,
    skip: usize,
    take: usize,
}

impl ListParams {
    fn from_request(request: &RequestLog) -> Result<ListParams, String> {
        let date = |name: &str| -> Result<Option<String>, String> {
            match request.param(name) {
                None | Some("") => Ok(None),
                Some(v) => day_of(v)
                    .map(|d| Some(d.to_string()))
                    .ok_or_else(|| format!("{name}={v:?} is not a date")),
            }
        };
        let number = |name: &str, default: usize| -> Result<usize, String> {
            match request.param(name) {
                None | Some("") => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a number")),
            }
        };
        let bodies = request
            .params("answeringBodies")
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("answeringBodies={v:?} is not a number"))
            })
            .collect::<Result<Vec<u64>, String>>()?;
        Ok(ListParams {
            answered: (date("answeredWhenFrom")?, date("answeredWhenTo")?),
            corrected: (date("correctedWhenFrom")?, date("correctedWhenTo")?),
            house: request
                .param("house")
                .filter(|h| !h.is_empty())
                .map(str::to_string),
            bodies,
            skip: number("skip", 0)?,
            take: number("take", 20)?,
        })
    }

    fn matches(&self, record: &Value) -> bool {
        in_range(record, "dateAnswered", &self.answered)
            && in_range(record, "dateAnswerCorrected", &self.corrected)
            && self
                .house
                .as_ref()
                .is_none_or(|h| record.get("house").and_then(Value::as_str) == Some(h.as_str()))
            && (self.bodies.is_empty()
                || record
                    .get("answeringBodyId")
                    .and_then(Value::as_u64)
                    .is_some_and(|b| self.bodies.contains(&b)))
    }
}

fn list(request: &RequestLog, params: &ListParams, shared: &Shared) -> Response {
    let mut state = shared.lock();
    let state = &mut *state;
    if let Some(hook) = state.list_hook.as_mut() {
        hook(&mut state.records, request);
    }
    let mut matching: Vec<&Value> = state.records.iter().filter(|r| params.matches(r)).collect();
    matching.sort_by(|a, b| {
        let key = |r: &Value| {
            (
                r.get("dateAnswered")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                record_id(r).unwrap_or(0),
            )
        };
        key(b).cmp(&key(a))
    });
    let total = matching.len();
    let results: Vec<Value> = matching
        .into_iter()
        .skip(params.skip)
        .take(params.take)
        .map(|record| {
            let mut record = record.clone();
            if let Some(n) = state.truncate_over {
                for field in ["questionText", "answerText"] {
                    if let Some(Value::String(text)) = record.get_mut(field) {
                        if text.chars().count() > n {
                            let cut: String = text.chars().take(n).collect();
                            *text = format!("{cut}...");
                        }
                    }
                }
            }
            let links = match record_id(&record) {
                Some(id) => {
                    json!([{"rel": "self", "href": format!("{LIST_PATH}/{id}"), "method": "GET"}])
                }
                None => json!([]),
            };
            json!({"value": record, "links": links})
        })
        .collect();
    Response::json(200, &json!({"results": results, "totalResults": total}))
}

/// Whether the record's `field` date falls in `[from, to]`. With neither bound, every record
/// does; with either, records without the date do not.
fn in_range(record: &Value, field: &str, (from, to): &(Option<String>, Option<String>)) -> bool {
    if from.is_none() && to.is_none() {
        return true;
    }
    let Some(day) = record.get(field).and_then(Value::as_str).and_then(day_of) else {
        return false;
    };
    from.as_deref().is_none_or(|f| day >= f) && to.as_deref().is_none_or(|t| day <= t)
}

/// The `YYYY-MM-DD` at the start of a date or date-time.
fn day_of(text: &str) -> Option<&str> {
    let day = text.get(..10)?;
    let ok = day.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        _ => b.is_ascii_digit(),
    });
    ok.then_some(day)
}

fn record_id(record: &Value) -> Option<u64> {
    record.get("id").and_then(Value::as_u64)
}

fn write_response(stream: &mut TcpStream, response: &Response) -> io::Result<()> {
    // No body is allowed with 1xx, 204 and 304.
    let bodiless = response.status < 200 || response.status == 204 || response.status == 304;
    let body: &[u8] = if bodiless { &[] } else { &response.body };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !bodiless {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()?;
    // Send FIN after the response, then wait briefly for the client's close, so that nothing we
    // wrote is lost to a reset.
    stream.shutdown(Shutdown::Write)?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 512];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
