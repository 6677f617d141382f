//! Reading stored events back: a `Deserialize` for [`Event`] that reads the `kind` tag first.
//!
//! serde's derived code for an internally tagged enum buffers the whole event (the record with
//! its every block and cell) into an intermediate tree before it knows which variant it has; on
//! a log read end to end that buffering was a large share of the cost. Events are always written
//! with `kind` first (serde writes the tag before the fields), so the fast path reads the tag
//! and then the variant's fields straight from the input. Input with the tag elsewhere (written
//! by hand, or by another tool) takes the slow path through a JSON value; both accept exactly
//! what the derived code accepted.

use serde::de::{self, value::MapAccessDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{AlertSent, Event, Flag, QuestionKey, KINDS};
use crate::record::AnswerRecord;

#[derive(Deserialize)]
struct Observed {
    question: QuestionKey,
    record: Box<AnswerRecord>,
}

#[derive(Deserialize)]
struct Revised {
    question: QuestionKey,
    previous_hash: String,
    previous_seq: u64,
    record: Box<AnswerRecord>,
}

/// Holding answers and withdrawals.
#[derive(Deserialize)]
struct MaybeRevised {
    question: QuestionKey,
    #[serde(default)]
    previous_hash: Option<String>,
    #[serde(default)]
    previous_seq: Option<u64>,
    record: Box<AnswerRecord>,
}

#[derive(Deserialize)]
struct Corrected {
    question: QuestionKey,
    #[serde(default)]
    previous_hash: Option<String>,
    #[serde(default)]
    previous_seq: Option<u64>,
    #[serde(default)]
    original_answer_text: Option<String>,
    record: Box<AnswerRecord>,
}

#[derive(Deserialize)]
struct Sent {
    alert: AlertSent,
}

#[derive(Deserialize)]
struct Raised {
    flag: Flag,
}

#[derive(Deserialize)]
struct Quarantined {
    reason: String,
    raw: String,
    #[serde(default)]
    raw_base64: Option<String>,
}

/// The variant named `kind`, its fields read from `fields`.
fn variant<'de, D: Deserializer<'de>>(kind: &str, fields: D) -> Result<Event, D::Error> {
    Ok(match kind {
        "answer_observed" => {
            let f = Observed::deserialize(fields)?;
            Event::AnswerObserved {
                question: f.question,
                record: f.record,
            }
        }
        "answer_revised" => {
            let f = Revised::deserialize(fields)?;
            Event::AnswerRevised {
                question: f.question,
                previous_hash: f.previous_hash,
                previous_seq: f.previous_seq,
                record: f.record,
            }
        }
        "holding_answer_given" => {
            let f = MaybeRevised::deserialize(fields)?;
            Event::HoldingAnswerGiven {
                question: f.question,
                previous_hash: f.previous_hash,
                previous_seq: f.previous_seq,
                record: f.record,
            }
        }
        "answer_corrected" => {
            let f = Corrected::deserialize(fields)?;
            Event::AnswerCorrected {
                question: f.question,
                previous_hash: f.previous_hash,
                previous_seq: f.previous_seq,
                original_answer_text: f.original_answer_text,
                record: f.record,
            }
        }
        "question_withdrawn" => {
            let f = MaybeRevised::deserialize(fields)?;
            Event::QuestionWithdrawn {
                question: f.question,
                previous_hash: f.previous_hash,
                previous_seq: f.previous_seq,
                record: f.record,
            }
        }
        "alert_sent" => Event::AlertSent {
            alert: Sent::deserialize(fields)?.alert,
        },
        "flag_raised" => Event::FlagRaised {
            flag: Raised::deserialize(fields)?.flag,
        },
        "record_quarantined" => {
            let f = Quarantined::deserialize(fields)?;
            Event::RecordQuarantined {
                reason: f.reason,
                raw: f.raw,
                raw_base64: f.raw_base64,
            }
        }
        other => return Err(de::Error::unknown_variant(other, KINDS)),
    })
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event: a map with a `kind`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Err(de::Error::missing_field("kind"));
        };
        if first == "kind" {
            let kind: String = map.next_value()?;
            return variant(&kind, MapAccessDeserializer::new(map));
        }
        let mut fields = serde_json::Map::new();
        fields.insert(first, map.next_value()?);
        while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
            fields.insert(key, value);
        }
        let kind = match fields.remove("kind") {
            Some(serde_json::Value::String(kind)) => kind,
            Some(_) => return Err(de::Error::custom("`kind` is not a string")),
            None => return Err(de::Error::missing_field("kind")),
        };
        variant(&kind, serde_json::Value::Object(fields)).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_may_come_anywhere_and_unknown_kinds_are_named() {
        let first: Event = serde_json::from_str(
            r#"{"kind":"alert_sent","alert":{"id":"a","subscription":"s","recipient":"r","message_id":"m","covers":[1]}}"#,
        )
        .unwrap();
        let last: Event = serde_json::from_str(
            r#"{"alert":{"id":"a","subscription":"s","recipient":"r","message_id":"m","covers":[1]},"kind":"alert_sent"}"#,
        )
        .unwrap();
        assert_eq!(first, last);
        let err = serde_json::from_str::<Event>(r#"{"kind":"answer_eaten"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("answer_eaten"), "{err}");
        let err = serde_json::from_str::<Event>(r#"{"reason":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind"), "{err}");
        let err = serde_json::from_str::<Event>(r#"{"kind":"record_quarantined"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("reason"), "{err}");
    }
}
