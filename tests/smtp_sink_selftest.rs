//! Checks the SMTP sink (tests/support/smtp.rs + smtp_sink.py) with a minimal SMTP client, and
//! its MIME reader on hand-made messages.
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;
use support::smtp::*;

const WAIT: Duration = Duration::from_secs(10);

/// A bare-bones SMTP client: one command, one (possibly multi-line) reply.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to sink");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        let mut client = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let (code, text) = client.reply();
        assert_eq!(code, 220, "greeting: {text}");
        client
    }

    /// Reads one reply: its code and its lines' texts joined with `\n`.
    fn reply(&mut self) -> (u16, String) {
        let mut texts = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed while waiting for a reply");
            let line = line.trim_end_matches(['\r', '\n']);
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            texts.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return (code, texts.join("\n"));
            }
        }
    }

    fn cmd(&mut self, line: &str) -> (u16, String) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    fn expect(&mut self, line: &str, code: u16) -> String {
        let (got, text) = self.cmd(line);
        assert_eq!(got, code, "{line} -> {got} {text}");
        text
    }

    /// DATA with dot-stuffing; `message` may use `\n` or `\r\n` line ends.
    fn data(&mut self, message: &str) -> (u16, String) {
        self.expect("DATA", 354);
        let mut wire = String::new();
        for line in message.replace("\r\n", "\n").split_terminator('\n') {
            if line.starts_with('.') {
                wire.push('.');
            }
            wire.push_str(line);
            wire.push_str("\r\n");
        }
        wire.push_str(".\r\n");
        self.writer.write_all(wire.as_bytes()).unwrap();
        self.reply()
    }

    fn quit(mut self) {
        self.expect("QUIT", 221);
    }
}

/// One whole session without AUTH.
fn send(port: u16, from: &str, to: &[&str], message: &str) {
    let mut c = Client::connect(port);
    c.expect("EHLO client.test", 250);
    c.expect(&format!("MAIL FROM:<{from}>"), 250);
    for rcpt in to {
        c.expect(&format!("RCPT TO:<{rcpt}>"), 250);
    }
    let (code, text) = c.data(message);
    assert_eq!(code, 250, "end of DATA: {text}");
    c.quit();
}

fn only(messages: Vec<ReceivedMessage>) -> ReceivedMessage {
    assert_eq!(messages.len(), 1, "{messages:#?}");
    messages.into_iter().next().unwrap()
}

#[test]
fn plain_message_arrives_with_headers_and_envelope() {
    let sink = SmtpSink::start();
    let message = "From: Alerts <alerts@answerfeed.test>\r\n\
                   To: ops@example.test, oncall@example.test\r\n\
                   Subject: Plain\r\n\
                   X-Folded: first part\r\n\tsecond part\r\n\
                   Message-ID: <1@answerfeed.test>\r\n\
                   Content-Type: text/plain; charset=utf-8\r\n\
                   \r\n\
                   Hello.\r\n\
                   .leading dot survives\r\n\
                   Bye.\r\n";
    send(
        sink.port(),
        "alerts@answerfeed.test",
        &["ops@example.test", "oncall@example.test"],
        message,
    );
    let m = only(sink.wait_for(1, WAIT));
    assert_eq!(m.mail_from, "alerts@answerfeed.test");
    assert_eq!(m.rcpt_tos, ["ops@example.test", "oncall@example.test"]);
    assert_eq!(m.header("from"), Some("Alerts <alerts@answerfeed.test>"));
    assert_eq!(m.header("SUBJECT"), Some("Plain"));
    assert_eq!(m.header("x-folded"), Some("first part\tsecond part"));
    assert_eq!(m.header("Message-Id"), Some("<1@answerfeed.test>"));
    assert_eq!(m.header("Cc"), None);
    let names: Vec<&str> = m.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "From",
            "To",
            "Subject",
            "X-Folded",
            "Message-ID",
            "Content-Type"
        ]
    );
    assert_eq!(m.subject(), "Plain");
    assert_eq!(
        m.text_part().as_deref(),
        Some("Hello.\n.leading dot survives\nBye.\n")
    );
    assert_eq!(m.html_part(), None);
    assert!(m.raw.contains("\r\n.leading dot survives\r\n"), "{}", m.raw);
}

#[test]
fn eight_bit_utf8_message_is_accepted() {
    let sink = SmtpSink::start();
    let mut c = Client::connect(sink.port());
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(ehlo.contains("8BITMIME"), "{ehlo}");
    assert!(ehlo.contains("SMTPUTF8"), "{ehlo}");
    c.expect(
        "MAIL FROM:<élan@answerfeed.test> BODY=8BITMIME SMTPUTF8",
        250,
    );
    c.expect("RCPT TO:<zoë@example.test>", 250);
    let (code, text) = c.data(
        "Subject: Café ☕\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Crème brûlée — 100 %\r\n",
    );
    assert_eq!(code, 250, "{text}");
    c.quit();
    let m = only(sink.wait_for(1, WAIT));
    assert_eq!(m.mail_from, "élan@answerfeed.test");
    assert_eq!(m.rcpt_tos, ["zoë@example.test"]);
    assert_eq!(m.subject(), "Café ☕");
    assert_eq!(m.text_part().as_deref(), Some("Crème brûlée — 100 %\n"));
}

#[test]
fn multipart_alternative_decodes_quoted_printable_and_base64_parts() {
    let sink = SmtpSink::start();
    let html = "<html><body><p>Answer to question <b>12345</b> — \u{00e9}t\u{00e9} \u{1f4dc}</p>\
                <p>A long paragraph that makes the base64 wrap over several lines, \
                as a mailer would write it.</p></body></html>";
    let b64 = base64::engine::general_purpose::STANDARD.encode(html);
    let wrapped: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let message = format!(
        "From: alerts@answerfeed.test\r\n\
         To: ops@example.test\r\n\
         Subject: Multipart\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative;\r\n boundary=\"=_b1 'x'\"\r\n\
         \r\n\
         This is the preamble.\r\n\
         --=_b1 'x'\r\n\
         Content-Type: text/plain; charset=\"utf-8\"\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\
         \r\n\
         Answer to question 12345 =E2=80=94 =C3=A9t=C3=A9 =F0=9F=93=9C, with a soft =\r\n\
         line break and a literal =3D sign.\r\n\
         Second line.\r\n\
         --=_b1 'x'\r\n\
         Content-Type: text/html; charset=utf-8\r\n\
         Content-Transfer-Encoding: base64\r\n\
         \r\n\
         {}\r\n\
         --=_b1 'x'--\r\n\
         This is the epilogue.\r\n",
        wrapped.join("\r\n")
    );
    send(
        sink.port(),
        "alerts@answerfeed.test",
        &["ops@example.test"],
        &message,
    );
    let m = only(sink.wait_for(1, WAIT));
    assert_eq!(
        m.text_part().as_deref(),
        Some(
            "Answer to question 12345 — été 📜, with a soft line break and a literal = sign.\n\
             Second line."
        )
    );
    assert_eq!(m.html_part().as_deref(), Some(html));
}

#[test]
fn nested_multiparts_are_searched_and_attachments_skipped() {
    let raw = "Content-Type: multipart/mixed; boundary=outer\r\n\
               \r\n\
               --outer\r\n\
               Content-Type: text/plain\r\n\
               Content-Disposition: attachment; filename=\"notes.txt\"\r\n\
               \r\n\
               not the body\r\n\
               --outer\r\n\
               Content-Type: multipart/alternative; boundary=\"inner\"\r\n\
               \r\n\
               --inner\r\n\
               Content-Type: text/plain; charset=us-ascii\r\n\
               \r\n\
               plain body\r\n\
               --inner\r\n\
               Content-Type: text/html; charset=iso-8859-1\r\n\
               Content-Transfer-Encoding: quoted-printable\r\n\
               \r\n\
               <p>caf=E9</p>\r\n\
               --inner--\r\n\
               --outer--\r\n";
    let m = ReceivedMessage::parse(raw, String::new(), Vec::new());
    assert_eq!(m.text_part().as_deref(), Some("plain body"));
    assert_eq!(m.html_part().as_deref(), Some("<p>café</p>"));
}

#[test]
fn mime_reader_edge_cases() {
    // No Content-Type: text/plain; bare LF line ends; unpadded base64 split over lines.
    let m = ReceivedMessage::parse(
        "Subject: x\nContent-Transfer-Encoding: base64\n\naGVsbG8g\nd29ybGQ\n",
        String::new(),
        Vec::new(),
    );
    assert_eq!(m.text_part().as_deref(), Some("hello world"));
    assert_eq!(m.html_part(), None);
    // Headers only.
    let m = ReceivedMessage::parse("Subject: only headers", String::new(), Vec::new());
    assert_eq!(m.subject(), "only headers");
    assert_eq!(m.text_part().as_deref(), Some(""));
    // Multipart without a boundary parameter, or with no parts: nothing found, no panic.
    for raw in [
        "Content-Type: multipart/alternative\r\n\r\nbody\r\n",
        "Content-Type: multipart/alternative; boundary=b\r\n\r\nno delimiters\r\n",
        "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b--\r\n",
    ] {
        let m = ReceivedMessage::parse(raw, String::new(), Vec::new());
        assert_eq!(m.text_part(), None, "{raw}");
    }
    // Quoted-printable: malformed escapes kept, trailing whitespace dropped, CRLF soft breaks.
    let m = ReceivedMessage::parse(
        "Content-Type: text/plain\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\n\
         a=ZZb =\r\nc=c3=a9  \r\nend=",
        String::new(),
        Vec::new(),
    );
    assert_eq!(m.text_part().as_deref(), Some("a=ZZb cé\nend"));
}

#[test]
fn rfc2047_subjects_decode() {
    let sink = SmtpSink::start();
    // "Réponse publiée: question 42 ✅" split over a base64 word and a Q word, folded.
    let b = base64::engine::general_purpose::STANDARD.encode("Réponse publiée");
    let message = format!(
        "From: alerts@answerfeed.test\r\n\
         To: ops@example.test\r\n\
         Subject: =?utf-8?b?{b}?=\r\n =?UTF-8?Q?:_question_42_=E2=9C=85?=\r\n\
         \r\n\
         body\r\n"
    );
    send(
        sink.port(),
        "alerts@answerfeed.test",
        &["ops@example.test"],
        &message,
    );
    let m = only(sink.wait_for(1, WAIT));
    assert_eq!(m.subject(), "Réponse publiée: question 42 ✅");

    assert_eq!(
        decode_rfc2047("Re: =?utf-8?q?caf=C3=A9?= ok"),
        "Re: café ok"
    );
    assert_eq!(decode_rfc2047("=?iso-8859-1?q?caf=E9?="), "café");
    // A character split across two words of one charset.
    assert_eq!(decode_rfc2047("=?utf-8?q?caf=C3?= =?utf-8?q?=A9?="), "café");
    // Not encoded-words: kept as they are.
    assert_eq!(decode_rfc2047("a =?broken b ?= c"), "a =?broken b ?= c");
    assert_eq!(decode_rfc2047("=?utf-8?x?abc?="), "=?utf-8?x?abc?=");
    assert_eq!(decode_rfc2047("100% =?"), "100% =?");
}

#[test]
fn restart_keeps_port_and_messages() {
    let mut sink = SmtpSink::start();
    let port = sink.port();
    send(
        port,
        "a@answerfeed.test",
        &["b@example.test"],
        "Subject: one\r\n\r\n1\r\n",
    );
    assert_eq!(sink.wait_for(1, WAIT).len(), 1);

    sink.stop();
    sink.stop(); // idempotent
    assert!(!sink.is_running());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening after stop"
    );
    assert_eq!(sink.messages().len(), 1, "messages readable while stopped");

    sink.restart();
    assert_eq!(sink.port(), port);
    send(
        port,
        "a@answerfeed.test",
        &["c@example.test"],
        "Subject: two\r\n\r\n2\r\n",
    );
    let got = sink.wait_for(2, WAIT);
    let subjects: Vec<String> = got.iter().map(|m| m.subject()).collect();
    assert_eq!(subjects, ["one", "two"]);
    assert_eq!(got[1].rcpt_tos, ["c@example.test"]);
    let mut files: Vec<String> = std::fs::read_dir(sink.mail_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["000001.eml", "000001.json", "000002.eml", "000002.json"]
    );

    // A fresh sink on a port we name.
    sink.stop();
    let other = SmtpSink::start_on(port);
    assert_eq!(other.port(), port);
    assert!(other.messages().is_empty());
    send(
        port,
        "a@answerfeed.test",
        &["d@example.test"],
        "Subject: three\r\n\r\n3\r\n",
    );
    assert_eq!(only(other.wait_for(1, WAIT)).subject(), "three");
}

#[test]
fn auth_is_required_and_checked() {
    let sink = SmtpSink::start_with_auth("alerts", "s3cret pass");
    let mut c = Client::connect(sink.port());
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(ehlo.contains("AUTH"), "{ehlo}");
    assert!(ehlo.contains("PLAIN"), "{ehlo}");

    let (code, text) = c.cmd("MAIL FROM:<alerts@answerfeed.test>");
    assert_eq!(code, 530, "MAIL before AUTH: {text}");

    let plain = |user: &str, password: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
    };
    let (code, text) = c.cmd(&format!("AUTH PLAIN {}", plain("alerts", "wrong")));
    assert_eq!(code, 535, "wrong password: {text}");
    let (code, text) = c.cmd("MAIL FROM:<alerts@answerfeed.test>");
    assert_eq!(code, 530, "MAIL after failed AUTH: {text}");

    c.expect(
        &format!("AUTH PLAIN {}", plain("alerts", "s3cret pass")),
        235,
    );
    c.expect("MAIL FROM:<alerts@answerfeed.test>", 250);
    c.expect("RCPT TO:<ops@example.test>", 250);
    let (code, text) = c.data("Subject: authed\r\n\r\nok\r\n");
    assert_eq!(code, 250, "{text}");
    c.quit();
    let m = only(sink.wait_for(1, WAIT));
    assert_eq!(m.subject(), "authed");
    assert_eq!(m.mail_from, "alerts@answerfeed.test");

    // AUTH LOGIN works too.
    let mut c = Client::connect(sink.port());
    c.expect("EHLO client.test", 250);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    c.expect("AUTH LOGIN", 334);
    c.expect(&b64("alerts"), 334);
    c.expect(&b64("s3cret pass"), 235);
    c.expect("MAIL FROM:<alerts@answerfeed.test>", 250);
    c.quit();
}
