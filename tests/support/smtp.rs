//! A real SMTP server on 127.0.0.1 for end-to-end tests of email alerts, and a small MIME reader
//! for what it receives.
//!
//! [`SmtpSink`] runs `tests/support/smtp_sink.py` (Python 3 with `aiosmtpd`; CI installs it in
//! `.ci/run`, locally `python3 -m pip install aiosmtpd`) as a child process. The script stores
//! each accepted message as `NNNNNN.eml` (raw bytes) with `NNNNNN.json` (envelope) in a
//! temporary directory that this struct owns; [`SmtpSink::messages`] reads them back in arrival
//! order as [`ReceivedMessage`]s.
//!
//! The MIME reader handles what alert mail needs: unfolded headers, RFC 2047 encoded-words in
//! the subject, nested multiparts, and quoted-printable / base64 / 7bit / 8bit bodies. Decoded
//! text parts have their line breaks normalised to `\n`.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// The Python script this module drives.
pub const SINK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
/// How long the script may take to print `READY`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the script may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code of the script when it cannot bind its port.
const EXIT_BIND_FAILED: i32 = 2;

/// A running (or stopped) SMTP sink. Stopped on drop; its directory is removed on drop too.
pub struct SmtpSink {
    child: Option<Child>,
    port: u16,
    auth: Option<(String, String)>,
    /// Owns everything on disk: `mail/` (the messages) and `sink.stderr` (the script's stderr).
    dir: tempfile::TempDir,
}

impl SmtpSink {
    /// Starts a sink on a free port, without AUTH.
    pub fn start() -> SmtpSink {
        Self::launch_on_free_port(None)
    }

    /// Starts a sink on `port`, without AUTH, with a fresh (empty) directory.
    pub fn start_on(port: u16) -> SmtpSink {
        let dir = new_dir();
        let mut sink = SmtpSink {
            child: None,
            port,
            auth: None,
            dir,
        };
        if let Err(e) = sink.spawn() {
            panic!("{}", e.message());
        }
        sink
    }

    /// Starts a sink on a free port that refuses MAIL (530) until `AUTH PLAIN` or `AUTH LOGIN`
    /// succeeds with these credentials. AUTH is offered without TLS.
    pub fn start_with_auth(user: &str, password: &str) -> SmtpSink {
        Self::launch_on_free_port(Some((user.to_string(), password.to_string())))
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory the messages are stored in (`NNNNNN.eml` + `NNNNNN.json`).
    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGTERM and waits for the process to exit (killing it after 10 s). Messages already
    /// received stay readable. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = child.kill();
                        break;
                    }
                }
            }
        }
        let _ = child.wait();
    }

    /// Stops the server and starts it again on the same port, with the same directory (so
    /// messages received before are kept, and numbering carries on) and the same credentials.
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; something else grabbing it in between is unlikely, but
        // a slow release of the listening socket is retried briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if e.bind_failed && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("{}", e.message()),
            }
        }
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        let dir = self.mail_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut numbered: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".eml")?;
                if stem.len() < 6 || !stem.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some((stem.parse().ok()?, e.path()))
            })
            .collect();
        numbered.sort();
        numbered
            .into_iter()
            .filter_map(|(_, path)| {
                let bytes = fs::read(&path).ok()?;
                let meta: serde_json::Value = fs::read(path.with_extension("json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(serde_json::Value::Null);
                let mail_from = meta["mail_from"].as_str().unwrap_or_default().to_string();
                let rcpt_tos = meta["rcpt_tos"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(ReceivedMessage::parse(
                    &String::from_utf8_lossy(&bytes),
                    mail_from,
                    rcpt_tos,
                ))
            })
            .collect()
    }

    /// Polls until at least `n` messages have arrived or `timeout` passes; returns all there are.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    fn launch_on_free_port(auth: Option<(String, String)>) -> SmtpSink {
        let dir = new_dir();
        let mut sink = SmtpSink {
            child: None,
            port: 0,
            auth,
            dir,
        };
        // The port is free when we look, but another process may take it before the script
        // binds; then try another one.
        let mut attempts = 0;
        loop {
            attempts += 1;
            sink.port = free_port();
            match sink.spawn() {
                Ok(()) => return sink,
                Err(e) if e.bind_failed && attempts < 5 => continue,
                Err(e) => panic!("{}", e.message()),
            }
        }
    }

    /// Spawns the script on `self.port` with `self.dir` and waits for READY.
    fn spawn(&mut self) -> Result<(), SpawnError> {
        assert!(self.child.is_none(), "SmtpSink already running");
        ensure_aiosmtpd();
        let mail_dir = self.mail_dir();
        let stderr_path = self.dir.path().join("sink.stderr");
        let stderr_file = fs::File::create(&stderr_path).expect("create smtp sink stderr file");
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(SINK_SCRIPT)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&mail_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        if let Some((user, password)) = &self.auth {
            cmd.arg("--auth-user")
                .arg(user)
                .arg("--auth-password")
                .arg(password);
        }
        let mut child = cmd.spawn().map_err(|e| SpawnError {
            bind_failed: false,
            text: format!("could not run python3 {SINK_SCRIPT}: {e} (is Python 3 installed?)"),
        })?;

        // A thread reads stdout to its end, so the script never blocks on a full pipe; the first
        // line it reads (or EOF) is passed on.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<Option<String>>();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(|l| l.ok());
            let _ = tx.send(first);
            for _ in lines {}
        });

        let outcome = rx.recv_timeout(READY_TIMEOUT);
        if let Ok(Some(line)) = &outcome {
            if line.trim() == "READY" {
                self.child = Some(child);
                return Ok(());
            }
        }
        // Not ready: make sure it is gone, then say why.
        let _ = child.kill();
        let status = child.wait().ok();
        let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
        let code = status.and_then(|s| s.code());
        let why = match outcome {
            Err(_) => format!("no READY within {READY_TIMEOUT:?}"),
            Ok(None) => format!("it exited before READY (exit code {code:?})"),
            Ok(Some(line)) => format!("it printed {line:?} instead of READY"),
        };
        let hint = if stderr.contains("aiosmtpd") && stderr.contains("import") {
            "\nhint: aiosmtpd is missing: python3 -m pip install aiosmtpd (pip install aiosmtpd)"
        } else {
            ""
        };
        Err(SpawnError {
            bind_failed: code == Some(EXIT_BIND_FAILED),
            text: format!(
                "SMTP sink failed to start on 127.0.0.1:{}: {why}\n--- stderr of {SINK_SCRIPT} ---\n{stderr}{hint}",
                self.port
            ),
        })
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

struct SpawnError {
    bind_failed: bool,
    text: String,
}

impl SpawnError {
    fn message(&self) -> String {
        self.text.clone()
    }
}

fn new_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("smtp-sink-")
        .tempdir()
        .expect("create smtp sink temp dir");
    fs::create_dir_all(dir.path().join("mail")).expect("create smtp sink mail dir");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// MIME reading
// ---------------------------------------------------------------------------------------------

/// One message as the sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The message as received (dot-unstuffed), bytes that are not UTF-8 replaced.
    pub raw: String,
    /// The envelope sender (`MAIL FROM`), without angle brackets.
    pub mail_from: String,
    /// The envelope recipients (`RCPT TO`), in order, without angle brackets.
    pub rcpt_tos: Vec<String>,
    /// The top-level headers in order, unfolded, values trimmed (not RFC 2047-decoded).
    pub headers: Vec<(String, String)>,
}

impl ReceivedMessage {
    /// Parses a raw message with its envelope.
    pub fn parse(raw: &str, mail_from: String, rcpt_tos: Vec<String>) -> ReceivedMessage {
        let (headers, _) = split_entity(raw);
        ReceivedMessage {
            raw: raw.to_string(),
            mail_from,
            rcpt_tos,
            headers,
        }
    }

    /// The first header of this name (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All headers of this name (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The Subject, with RFC 2047 encoded-words decoded; empty when there is none.
    pub fn subject(&self) -> String {
        self.header("subject")
            .map(decode_rfc2047)
            .unwrap_or_default()
    }

    /// The `text/plain` body: the first non-attachment text/plain part found depth-first, or
    /// the whole body of a single-part text/plain message (also when it has no Content-Type).
    /// Transfer encoding undone, charset decoded, line breaks as `\n`.
    pub fn text_part(&self) -> Option<String> {
        find_part(&self.raw, "text/plain", 0)
    }

    /// The `text/html` body, found and decoded as [`ReceivedMessage::text_part`].
    pub fn html_part(&self) -> Option<String> {
        find_part(&self.raw, "text/html", 0)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Splits an entity (a message or a body part) into unfolded headers and the body. The header
/// block ends at the first empty line; with none, everything is headers and the body is empty.
/// Accepts CRLF or bare LF line ends.
fn split_entity(text: &str) -> (Vec<(String, String)>, &str) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    let mut body_start = text.len();
    while pos < text.len() {
        let (line, next) = match text[pos..].find('\n') {
            Some(i) => (&text[pos..pos + i], pos + i + 1),
            None => (&text[pos..], text.len()),
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            body_start = next;
            break;
        }
        if line.starts_with([' ', '\t']) {
            // Continuation: unfolding removes only the line break.
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.to_string()));
        }
        // Anything else (a malformed line) is skipped.
        pos = next;
    }
    for (_, value) in &mut headers {
        *value = value.trim().to_string();
    }
    (headers, &text[body_start.min(text.len())..])
}

/// A Content-Type value split into its lower-cased `type/subtype` and parameters (names
/// lower-cased, quoted values unquoted).
fn parse_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut pieces = split_params(value).into_iter();
    let mime = pieces
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let params = pieces
        .filter_map(|p| {
            let (name, value) = p.split_once('=')?;
            let value = value.trim();
            let value = if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
                unescape_quoted(&value[1..value.len() - 1])
            } else {
                value.to_string()
            };
            Some((name.trim().to_ascii_lowercase(), value))
        })
        .collect();
    (mime, params)
}

/// Splits on `;` outside double quotes.
fn split_params(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            current.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => {
                current.push(c);
                escaped = true;
            }
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            ';' if !in_quotes => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    out.push(current);
    out
}

fn unescape_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Depth-first search of an entity for a non-attachment leaf of type `want`, decoded.
fn find_part(entity: &str, want: &str, depth: usize) -> Option<String> {
    if depth > 32 {
        return None;
    }
    let (headers, body) = split_entity(entity);
    let (mime, params) = match find_header(&headers, "content-type") {
        Some(ct) => parse_content_type(ct),
        None => ("text/plain".to_string(), Vec::new()),
    };
    if mime.starts_with("multipart/") {
        let boundary = param(&params, "boundary")?;
        return multipart_bodies(body, boundary)
            .into_iter()
            .find_map(|part| find_part(part, want, depth + 1));
    }
    if mime != want {
        return None;
    }
    let is_attachment = find_header(&headers, "content-disposition")
        .map(|d| parse_content_type(d).0 == "attachment")
        .unwrap_or(false);
    if is_attachment {
        return None;
    }
    let encoding = find_header(&headers, "content-transfer-encoding")
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => decode_base64(body),
        _ => body.as_bytes().to_vec(),
    };
    let text = decode_charset(&bytes, param(&params, "charset").unwrap_or("utf-8"));
    Some(text.replace("\r\n", "\n"))
}

/// The bodies of the parts of a multipart body (RFC 2046 §5.1.1): the line break before each
/// delimiter line belongs to the delimiter; the preamble and epilogue are dropped.
fn multipart_bodies<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut part_start: Option<usize> = None;
    let mut pos = 0;
    while pos < body.len() {
        let (line_end, next) = match body[pos..].find('\n') {
            Some(i) => (pos + i, pos + i + 1),
            None => (body.len(), body.len()),
        };
        let line = body[pos..line_end]
            .strip_suffix('\r')
            .unwrap_or(&body[pos..line_end]);
        if let Some(rest) = line.strip_prefix(delimiter.as_str()) {
            let closing = rest.starts_with("--");
            let rest = if closing { &rest[2..] } else { rest };
            if rest.trim_end_matches([' ', '\t']).is_empty() {
                if let Some(start) = part_start {
                    // Drop the line break before the delimiter line.
                    let mut end = pos.max(start);
                    if end > start && body.as_bytes()[end - 1] == b'\n' {
                        end -= 1;
                        if end > start && body.as_bytes()[end - 1] == b'\r' {
                            end -= 1;
                        }
                    }
                    parts.push(&body[start..end]);
                }
                if closing {
                    return parts;
                }
                part_start = Some(next);
            }
        }
        pos = next;
    }
    // No closing delimiter: take what follows the last delimiter as a part.
    if let Some(start) = part_start {
        if start < body.len() {
            parts.push(&body[start..]);
        }
    }
    parts
}

/// Quoted-printable (RFC 2045 §6.7): `=XX` escapes, `=` at the end of a line is a soft line
/// break, trailing whitespace on a line is transport padding. Malformed escapes are kept as
/// they are.
fn decode_quoted_printable(body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut lines = body.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_end_matches([' ', '\t']);
        let (content, soft) = match line.strip_suffix('=') {
            Some(c) => (c, true),
            None => (line, false),
        };
        let bytes = content.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if let Some(b) = hex_escape(bytes, i) {
                out.push(b);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        if !soft && lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// The byte of an `=XX` escape at `bytes[i]`, if there is one.
fn hex_escape(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'=') {
        return None;
    }
    let high = hex_val(*bytes.get(i + 1)?)?;
    let low = hex_val(*bytes.get(i + 2)?)?;
    Some(high << 4 | low)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Base64 with whitespace (and any other non-alphabet bytes) ignored, padding optional,
/// non-zero trailing bits allowed; a dangling single character at the end is dropped.
fn decode_base64(body: &str) -> Vec<u8> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let mut clean: Vec<u8> = body
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    engine.decode(&clean).unwrap_or_default()
}

/// Bytes in a charset to text: UTF-8 (and ASCII) and ISO-8859-1 exactly, anything else read as
/// UTF-8 with invalid bytes replaced.
fn decode_charset(bytes: &[u8], charset: &str) -> String {
    let cs = charset.trim().to_ascii_lowercase();
    match cs.as_str() {
        "iso-8859-1" | "latin1" | "latin-1" | "iso8859-1" => {
            bytes.iter().map(|&b| b as char).collect()
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Decodes RFC 2047 encoded-words (`=?charset?B?...?=`, `=?charset?Q?...?=`) in an unfolded
/// header value. Whitespace between adjacent encoded-words is dropped, and adjacent words in the
/// same charset are decoded together (so a character split across two words survives).
/// Anything that does not parse as an encoded-word is kept as it is.
pub fn decode_rfc2047(value: &str) -> String {
    let mut out = String::new();
    // Bytes of the encoded-word(s) just seen, with their charset, not yet decoded.
    let mut pending: Option<(String, Vec<u8>)> = None;
    // Whitespace since the last token; dropped when it separates two encoded-words.
    let mut gap = String::new();
    let mut rest = value;
    while let Some(c) = rest.chars().next() {
        if c == '=' {
            if let Some((charset, bytes, len)) = parse_encoded_word(rest) {
                match &mut pending {
                    Some((cs, buf)) if *cs == charset => buf.extend_from_slice(&bytes),
                    Some(_) => {
                        flush_pending(&mut out, &mut pending);
                        pending = Some((charset, bytes));
                    }
                    None => {
                        out.push_str(&gap);
                        pending = Some((charset, bytes));
                    }
                }
                gap.clear();
                rest = &rest[len..];
                continue;
            }
        }
        if c == ' ' || c == '\t' {
            gap.push(c);
        } else {
            flush_pending(&mut out, &mut pending);
            out.push_str(&gap);
            gap.clear();
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    flush_pending(&mut out, &mut pending);
    out.push_str(&gap);
    out
}

fn flush_pending(out: &mut String, pending: &mut Option<(String, Vec<u8>)>) {
    if let Some((charset, bytes)) = pending.take() {
        out.push_str(&decode_charset(&bytes, &charset));
    }
}

/// Parses one encoded-word at the start of `s`: (charset, decoded bytes, length consumed).
fn parse_encoded_word(s: &str) -> Option<(String, Vec<u8>, usize)> {
    let inner = s.strip_prefix("=?")?;
    let q1 = inner.find('?')?;
    let charset = &inner[..q1];
    let after_cs = &inner[q1 + 1..];
    let q2 = after_cs.find('?')?;
    let encoding = &after_cs[..q2];
    let after_enc = &after_cs[q2 + 1..];
    let end = after_enc.find("?=")?;
    let text = &after_enc[..end];
    if charset.is_empty() || text.contains([' ', '\t']) {
        return None;
    }
    // RFC 2231 language suffix: charset*lang.
    let charset = charset
        .split('*')
        .next()
        .unwrap_or(charset)
        .to_ascii_lowercase();
    let bytes = match encoding {
        "B" | "b" => decode_base64(text),
        "Q" | "q" => {
            let raw = text.as_bytes();
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                match raw[i] {
                    b'_' => {
                        out.push(b' ');
                        i += 1;
                    }
                    _ if hex_escape(raw, i).is_some() => {
                        out.extend(hex_escape(raw, i));
                        i += 3;
                    }
                    b => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            out
        }
        _ => return None,
    };
    let consumed = 2 + q1 + 1 + q2 + 1 + end + 2;
    Some((charset, bytes, consumed))
}

/// Installs aiosmtpd from PyPI the first time a sink is needed on a machine that lacks it, so
/// that `cargo test` works on a fresh machine (Rust, Python 3 and pip), as README promises.
fn ensure_aiosmtpd() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let present = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if present {
            return;
        }
        for extra in [&[][..], &["--user"][..], &["--break-system-packages"][..]] {
            let installed = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet"])
                .args(extra)
                .arg("aiosmtpd")
                .status()
                .is_ok_and(|s| s.success());
            if installed {
                return;
            }
        }
    });
}
