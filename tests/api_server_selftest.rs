//! Checks the test API server in `tests/support/api_server.rs` itself, with a tiny std HTTP client
//! (and once with reqwest), so that tests built on it can trust what it serves.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::api_server::{fixture_records, ApiServer, Fault, RequestLog};

const LIST: &str = "/api/writtenquestions/questions";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends raw bytes and returns everything the server sends back until it closes.
fn exchange(server: &ApiServer, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    stream.write_all(request).expect("send");
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the reply: {e}"),
    }
    out
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = std::str::from_utf8(&raw[..end]).expect("UTF-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().expect("status code");
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.to_string(), v.trim().to_string())
        })
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn request(server: &ApiServer, method: &str, target: &str) -> Reply {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nX-Test: Yes\r\n\r\n",
        server.addr()
    );
    parse_reply(&exchange(server, req.as_bytes()))
}

fn get(server: &ApiServer, target: &str) -> Reply {
    request(server, "GET", target)
}

fn ids(page: &Value) -> Vec<u64> {
    page["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["value"]["id"].as_u64().expect("id"))
        .collect()
}

fn total(page: &Value) -> u64 {
    page["totalResults"].as_u64().expect("totalResults")
}

fn server() -> ApiServer {
    ApiServer::start(fixture_records("questions.json"))
}

/// File order is newest first; the last two share a date, so the higher id comes first.
const ALL_NEWEST_FIRST: [u64; 10] = [
    1700001, 1700002, 1700003, 1700004, 1700005, 1700006, 1700007, 1700008, 1700010, 1700009,
];

#[test]
fn fixtures_have_the_documented_shape() {
    let records = fixture_records("questions.json");
    assert_eq!(records.len(), 10);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["id"], json!(1700001 + i as u64));
        let html = r["answerText"].as_str().expect("answerText");
        assert!(html.starts_with("<p>"), "{html:.40}");
    }
    let lords: Vec<u64> = records
        .iter()
        .filter(|r| r["house"] == "Lords")
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(lords, [1700003, 1700004, 1700007, 1700009, 1700010]);
    let tables = |r: &Value| {
        r["answerText"]
            .as_str()
            .unwrap_or("")
            .matches("<table>")
            .count()
    };
    assert_eq!(
        records.iter().map(tables).collect::<Vec<_>>(),
        [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    );
    assert!(records[3]["answerText"]
        .as_str()
        .expect("text")
        .contains("<tr><td></td><td>2022</td><td>2023</td><td>2024</td></tr>"));
    assert!(records[2]["answerText"]
        .as_str()
        .expect("text")
        .contains("<td>Avon &amp; Somerset</td>"));

    let correction = fixture_records("correction.json");
    assert_eq!(correction.len(), 1);
    assert_eq!(correction[0]["answerIsCorrection"], true);
    assert_eq!(
        correction[0]["originalAnswerText"],
        records[0]["answerText"]
    );
    let holding = fixture_records("holding.json");
    assert_eq!(holding.len(), 2);
    assert_eq!(holding[0]["answerIsHolding"], true);
    assert_eq!(holding[1]["answerIsHolding"], false);
    assert_eq!(holding[0]["id"], holding[1]["id"]);
    assert_eq!(fixture_records("withdrawn.json")[0]["isWithdrawn"], true);
    let page = support::api_server::fixture("page-1.json");
    assert_eq!(total(&page), 10);
    assert_eq!(page["results"][4]["value"], records[4]);
    let jsonl = std::fs::read_to_string(support::api_server::fixture_path("questions.jsonl"))
        .expect("questions.jsonl");
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines, records);
}

#[test]
fn list_is_newest_first_and_filters_by_answered_date_inclusively() {
    let server = server();
    let all = get(&server, LIST);
    assert_eq!(all.status, 200);
    assert!(all
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    assert_eq!(
        all.header("content-length"),
        Some(all.body.len().to_string().as_str())
    );
    let page = all.json();
    assert_eq!(ids(&page), ALL_NEWEST_FIRST);
    assert_eq!(total(&page), 10);
    assert_eq!(
        page["results"][0]["links"][0]["href"],
        "/api/writtenquestions/questions/1700001"
    );

    let window = get(
        &server,
        &format!("{LIST}?answeredWhenFrom=2025-02-05&answeredWhenTo=2025-03-07&expandMember=true"),
    )
    .json();
    assert_eq!(ids(&window), [1700003, 1700004, 1700005, 1700006]);
    assert_eq!(total(&window), 4);

    let from_only = get(&server, &format!("{LIST}?answeredWhenFrom=2025-03-18")).json();
    assert_eq!(ids(&from_only), [1700001, 1700002]);
    let to_only = get(&server, &format!("{LIST}?answeredWhenTo=2025-01-09")).json();
    assert_eq!(ids(&to_only), [1700010, 1700009]);
}

#[test]
fn unanswered_records_are_left_out_of_date_filters_only() {
    let server = server();
    let mut unanswered = fixture_records("holding.json")[0].clone();
    unanswered["dateAnswered"] = Value::Null;
    server.upsert(unanswered);
    assert_eq!(total(&get(&server, LIST).json()), 11);
    let q = format!("{LIST}?answeredWhenFrom=2000-01-01");
    assert_eq!(total(&get(&server, &q).json()), 10);
}

#[test]
fn corrected_dates_house_and_bodies_filter() {
    let server = server();
    server.upsert(fixture_records("correction.json").remove(0));
    assert_eq!(server.records().len(), 10, "upsert replaced 1700001");
    let corrected = get(
        &server,
        &format!("{LIST}?correctedWhenFrom=2025-03-30&correctedWhenTo=2025-03-30"),
    )
    .json();
    assert_eq!(ids(&corrected), [1700001]);
    assert_eq!(corrected["results"][0]["value"]["answerIsCorrection"], true);
    let none = get(&server, &format!("{LIST}?correctedWhenTo=2025-03-29")).json();
    assert_eq!(total(&none), 0);

    let lords = get(&server, &format!("{LIST}?house=Lords")).json();
    assert_eq!(ids(&lords), [1700003, 1700004, 1700007, 1700010, 1700009]);
    let empty_house = get(&server, &format!("{LIST}?house=")).json();
    assert_eq!(total(&empty_house), 10);
    let ag = get(&server, &format!("{LIST}?answeringBodies=2")).json();
    assert_eq!(ids(&ag), [1700004]);
    let both = get(
        &server,
        &format!("{LIST}?answeringBodies=1&answeringBodies=2"),
    )
    .json();
    assert_eq!(total(&both), 10);
    let commons_ag = get(&server, &format!("{LIST}?house=Commons&answeringBodies=2")).json();
    assert_eq!(total(&commons_ag), 0);
}

#[test]
fn query_values_are_percent_decoded() {
    let server = server();
    let mut joint = fixture_records("holding.json").remove(1);
    joint["house"] = json!("Joint Committee");
    server.upsert(joint);
    for q in [
        "house=Joint+Committee",
        "house=Joint%20Committee",
        "ho%75se=Joint%20Committe%65",
    ] {
        let page = get(&server, &format!("{LIST}?{q}")).json();
        assert_eq!(ids(&page), [1700011], "{q}");
    }
    let commons = get(&server, &format!("{LIST}?house=Comm%6Fns")).json();
    assert_eq!(total(&commons), 5);
    let log = server.requests();
    assert_eq!(log[0].param("house"), Some("Joint Committee"));
    assert_eq!(log[3].param("house"), Some("Commons"));
}

#[test]
fn paging_with_skip_and_take() {
    let server = server();
    let mut seen = Vec::new();
    for skip in (0..12).step_by(3) {
        let page = get(&server, &format!("{LIST}?skip={skip}&take=3")).json();
        assert_eq!(total(&page), 10);
        seen.extend(ids(&page));
    }
    assert_eq!(seen, ALL_NEWEST_FIRST);
    let past_end = get(&server, &format!("{LIST}?skip=20&take=3")).json();
    assert_eq!(ids(&past_end), Vec::<u64>::new());
    assert_eq!(total(&past_end), 10);
    let zero = get(&server, &format!("{LIST}?take=0")).json();
    assert_eq!((ids(&zero).len(), total(&zero)), (0, 10));
    // The default page is 20.
    server.set_records(
        (0..25)
            .map(|i| json!({"id": 1 + i, "dateAnswered": "2025-01-01T00:00:00"}))
            .collect(),
    );
    let first = get(&server, LIST).json();
    assert_eq!((ids(&first).len(), total(&first)), (20, 25));
    assert_eq!(ids(&first)[0], 25);
}

#[test]
fn by_id_is_whole_and_unknown_ids_are_404() {
    let server = server();
    server.set_truncate_list_text_over(Some(10));
    let one = get(&server, &format!("{LIST}/1700004?expandMember=true"));
    assert_eq!(one.status, 200);
    let one = one.json();
    assert_eq!(one["value"], fixture_records("questions.json")[3]);
    assert_eq!(one["links"], json!([]));

    let missing = get(&server, &format!("{LIST}/1"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), json!({"title": "Not Found"}));
    assert_eq!(get(&server, &format!("{LIST}/abc")).status, 400);
    assert_eq!(get(&server, &format!("{LIST}/1700004/x")).status, 404);
    assert_eq!(get(&server, "/elsewhere").status, 404);
    let post = request(&server, "POST", LIST);
    assert_eq!(post.status, 404);
    assert_eq!(post.json()["title"], "Not Found");
}

#[test]
fn list_truncates_long_text_like_the_real_api() {
    let server = server();
    let full = fixture_records("questions.json");
    server.set_truncate_list_text_over(Some(40));
    let page = get(&server, &format!("{LIST}?take=20")).json();
    for result in page["results"].as_array().expect("results") {
        let id = result["value"]["id"].as_u64().expect("id");
        let original = &full[(id - 1700001) as usize];
        for field in ["questionText", "answerText"] {
            let whole = original[field].as_str().expect("text");
            let served = result["value"][field].as_str().expect("text");
            let expected: String = whole.chars().take(40).collect::<String>() + "...";
            assert_eq!(served, expected, "{id} {field}");
        }
    }
    // Short text is left alone; whole text comes back when the limit is lifted.
    server.set_truncate_list_text_over(Some(100_000));
    assert_eq!(get(&server, LIST).json()["results"][0]["value"], full[0]);
    server.set_truncate_list_text_over(None);
    assert_eq!(get(&server, LIST).json()["results"][2]["value"], full[2]);
}

#[test]
fn status_and_rate_limit_faults_take_one_request_each_in_order() {
    let server = server();
    server.push_fault(Fault::Status(503));
    server.push_fault(Fault::TooManyRequests {
        retry_after_secs: 7,
    });
    assert_eq!(server.pending_faults(), 2);
    let first = get(&server, LIST);
    assert_eq!(first.status, 503);
    assert_eq!(first.json()["status"], 503);
    let second = get(&server, &format!("{LIST}/1700001"));
    assert_eq!(second.status, 429);
    assert_eq!(second.header("retry-after"), Some("7"));
    assert_eq!(get(&server, LIST).status, 200);
    assert_eq!(server.pending_faults(), 0);
}

#[test]
fn faults_between_successes_fire_only_after_a_request_served_normally() {
    let server = server();
    server.fail_between_successes(vec![Fault::Status(500), Fault::Status(503)]);
    // The first request follows no success: it is served.
    assert_eq!(get(&server, LIST).status, 200);
    assert_eq!(get(&server, LIST).status, 500);
    assert_eq!(get(&server, LIST).status, 200);
    // A queued fault comes first, and does not count as a success.
    server.push_fault(Fault::Status(502));
    assert_eq!(get(&server, LIST).status, 502);
    assert_eq!(get(&server, LIST).status, 200);
    assert_eq!(server.pending_faults(), 1);
    assert_eq!(get(&server, LIST).status, 503);
    assert_eq!(get(&server, LIST).status, 200);
    assert_eq!(get(&server, LIST).status, 200);
    assert_eq!(server.pending_faults(), 0);
}

#[test]
fn scoped_faults_wait_for_a_matching_request() {
    let server = server();
    server.push_fault_for("/questions/1700002", Fault::Status(500));
    server.push_list_fault(Fault::Status(502));
    server.push_fault_for("/questions/", Fault::Status(504));
    // A by-id request for another record skips the first fault and the list fault.
    assert_eq!(get(&server, &format!("{LIST}/1700001")).status, 504);
    assert_eq!(get(&server, &format!("{LIST}/1700002")).status, 500);
    assert_eq!(get(&server, &format!("{LIST}/1700002")).status, 200);
    assert_eq!(get(&server, LIST).status, 502);
    assert_eq!(get(&server, LIST).status, 200);
}

#[test]
fn hang_sends_nothing_then_closes() {
    let server = server();
    server.push_fault(Fault::Hang(Duration::from_millis(300)));
    let started = Instant::now();
    let raw = exchange(
        &server,
        format!("GET {LIST} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    let waited = started.elapsed();
    assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(get(&server, LIST).status, 200);
}

#[test]
fn reset_closes_without_an_answer() {
    let server = server();
    server.push_fault(Fault::Reset);
    let raw = exchange(
        &server,
        format!("GET {LIST} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(server.requests().len(), 1, "the request was still logged");
}

#[test]
fn truncated_body_is_the_first_half_of_the_real_one() {
    let server = server();
    let target = format!("{LIST}?take=5");
    let whole = get(&server, &target).body;
    server.push_fault(Fault::TruncatedBody);
    let cut = get(&server, &target);
    assert_eq!(cut.status, 200);
    assert_eq!(
        cut.header("content-length"),
        Some(cut.body.len().to_string().as_str())
    );
    assert!(cut.body.len() <= whole.len() / 2 && cut.body.len() + 4 > whole.len() / 2);
    assert!(whole.starts_with(&cut.body));
    let err = serde_json::from_slice::<Value>(&cut.body).expect_err("cut JSON");
    assert!(err.is_eof(), "{err}");

    // By id too.
    server.push_fault_for("/questions/", Fault::TruncatedBody);
    let one = get(&server, &format!("{LIST}/1700003"));
    let err = serde_json::from_slice::<Value>(&one.body).expect_err("cut JSON");
    assert!(err.is_eof(), "{err}");
}

#[test]
fn malformed_body_is_html_labelled_json() {
    let server = server();
    server.push_fault(Fault::MalformedBody);
    let reply = get(&server, LIST);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.body, b"<html>oops</html>");
}

#[test]
fn hook_can_insert_a_record_between_page_requests() {
    let server = server();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let mut newest = fixture_records("holding.json").remove(1);
    newest["dateAnswered"] = json!("2025-03-31T00:00:00");
    server.on_list_request(Box::new(move |records, request: &RequestLog| {
        seen.fetch_add(1, Ordering::SeqCst);
        if request.param("skip") == Some("3") && !records.iter().any(|r| r["id"] == 1700011) {
            records.push(newest.clone());
        }
    }));
    let first = get(&server, &format!("{LIST}?skip=0&take=3")).json();
    assert_eq!(ids(&first), [1700001, 1700002, 1700003]);
    assert_eq!(total(&first), 10);
    // Faulted requests do not reach the hook.
    server.push_fault(Fault::Status(500));
    assert_eq!(get(&server, &format!("{LIST}?skip=3&take=3")).status, 500);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let second = get(&server, &format!("{LIST}?skip=3&take=3")).json();
    // The new record is newest, so everything shifted down one place.
    assert_eq!(ids(&second), [1700003, 1700004, 1700005]);
    assert_eq!(total(&second), 11);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // By-id requests do not run the hook.
    assert_eq!(get(&server, &format!("{LIST}/1700011")).status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn requests_are_logged_in_order_with_decoded_query_and_lowercase_headers() {
    let server = server();
    get(
        &server,
        &format!("{LIST}?answeredWhenFrom=2025-01-01&answeringBodies=1&answeringBodies=2"),
    );
    get(&server, &format!("{LIST}/1700001?expandMember=true"));
    request(&server, "DELETE", &format!("{LIST}/1700001"));
    let log = server.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].path, LIST);
    assert_eq!(log[0].param("answeredWhenFrom"), Some("2025-01-01"));
    assert_eq!(log[0].params("answeringBodies"), ["1", "2"]);
    assert_eq!(log[0].param("take"), None);
    assert_eq!(log[0].header("x-test"), Some("Yes"));
    assert_eq!(log[0].header("X-Test"), Some("Yes"));
    assert!(log[0].headers.iter().any(|(k, _)| k == "host"));
    assert!(log[0].is_list());
    assert_eq!(log[1].path, format!("{LIST}/1700001"));
    assert_eq!(log[1].record_id(), Some(1700001));
    assert_eq!(
        log[1].query,
        [("expandMember".to_string(), "true".to_string())]
    );
    assert_eq!(log[2].method, "DELETE");
}

#[test]
fn malformed_requests_get_400() {
    let server = server();
    for q in [
        "house=%zz",
        "house=%C3",
        "skip=-1",
        "take=many",
        "answeredWhenFrom=yesterday",
        "correctedWhenTo=2025-1-1",
        "answeringBodies=home",
    ] {
        let reply = get(&server, &format!("{LIST}?{q}"));
        assert_eq!(reply.status, 400, "{q}");
        assert_eq!(reply.json()["title"], "Bad Request");
    }
    let garbage = parse_reply(&exchange(&server, b"nonsense\r\n\r\n"));
    assert_eq!(garbage.status, 400);
    let bad_header = parse_reply(&exchange(
        &server,
        format!("GET {LIST} HTTP/1.1\r\nno colon here\r\n\r\n").as_bytes(),
    ));
    assert_eq!(bad_header.status, 400);
    let endless = vec![b'a'; 70 * 1024];
    assert_eq!(parse_reply(&exchange(&server, &endless)).status, 400);
    // The server is still fine.
    assert_eq!(get(&server, LIST).status, 200);
}

#[test]
fn dropping_the_server_stops_it_promptly() {
    let started = Instant::now();
    for _ in 0..20 {
        let server = server();
        let addr = server.addr();
        server.push_fault(Fault::Hang(Duration::from_secs(30)));
        // A connection hanging in a fault does not hold up the drop.
        let mut hung = TcpStream::connect(addr).expect("connect");
        hung.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("send");
        drop(server);
        assert!(
            TcpStream::connect(addr).is_err(),
            "still accepting on {addr}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reqwest_reads_pages_and_sees_faults() {
    let server = server();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("{}{LIST}", server.base_url());
    let body = client
        .get(&url)
        .query(&[("answeredWhenFrom", "2025-03-01"), ("take", "2")])
        .send()
        .await
        .expect("send")
        .error_for_status()
        .expect("200")
        .bytes()
        .await
        .expect("body");
    let page: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(ids(&page), [1700001, 1700002]);
    assert_eq!(total(&page), 3);
    assert_eq!(server.requests()[0].header("accept-encoding"), Some("gzip"));

    server.push_fault(Fault::TruncatedBody);
    let cut = client.get(&url).send().await.expect("send").bytes().await;
    let cut = cut.expect("a complete HTTP exchange with a cut JSON body");
    assert!(serde_json::from_slice::<Value>(&cut)
        .expect_err("cut")
        .is_eof());

    server.push_fault(Fault::Reset);
    assert!(client.get(&url).send().await.is_err());

    server.push_fault(Fault::Hang(Duration::from_millis(300)));
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .expect("client");
    let err = quick.get(&url).send().await.expect_err("times out");
    assert!(err.is_timeout(), "{err}");

    server.push_fault(Fault::TooManyRequests {
        retry_after_secs: 3,
    });
    let limited = client.get(&url).send().await.expect("send");
    assert_eq!(limited.status().as_u16(), 429);
    assert_eq!(
        limited
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("3")
    );
}
