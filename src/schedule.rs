//! Cron schedules: a 6- or 7-field expression and a time zone in, the next run times out.
//!
//! The cron crate only computes times; the loops that sleep until them are the daemon's and the
//! digests'. A 5-field crontab line is refused with the 6-field form rather than guessed at.

use std::str::FromStr;

use chrono::{DateTime, Utc};

/// A cron expression with the time zone it is read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    tz: chrono_tz::Tz,
}

/// A time zone by its IANA name (or "UTC").
pub fn parse_timezone(timezone: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(timezone).map_err(|_| {
        format!(
            "time zone {timezone:?} is not known (use \"UTC\" or a name such as \"Europe/London\")"
        )
    })
}

impl Schedule {
    /// Parses a 6- or 7-field cron expression (seconds first). A 5-field crontab line is refused
    /// with the 6-field form, rather than guessed at.
    pub fn parse(expression: &str, timezone: &str) -> Result<Schedule, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if fields.len() == 5 {
            let dow_note = if fields[4].chars().any(|c| c.is_ascii_digit()) {
                " (and note that day-of-week counts Sunday as 1 here, not 0)"
            } else {
                ""
            };
            return Err(format!(
                "{expression:?} has 5 fields like a crontab line, but answerfeed's schedules have \
                 6, seconds first: \"0 {expression}\"{dow_note}"
            ));
        }
        let cron = cron::Schedule::from_str(expression)
            .map_err(|e| format!("{expression:?} is not a valid cron expression: {e}"))?;
        let tz = parse_timezone(timezone)?;
        if cron.after(&Utc::now().with_timezone(&tz)).next().is_none() {
            return Err(format!("{expression:?} never fires"));
        }
        Ok(Schedule { cron, tz })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&after.with_timezone(&self.tz))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_field_expressions_parse_and_five_field_ones_get_the_six_field_form() {
        let schedule = Schedule::parse("0 */15 * * * *", "UTC").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-01-05T10:07:30Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            schedule.next_after(t).unwrap().to_rfc3339(),
            "2026-01-05T10:15:00+00:00"
        );
        let err = Schedule::parse("*/15 * * * 1", "UTC").unwrap_err();
        assert!(err.contains("\"0 */15 * * * 1\""), "{err}");
        assert!(err.contains("Sunday as 1"), "{err}");
        assert!(Schedule::parse("not cron", "UTC").is_err());
        assert!(Schedule::parse("0 0 * * * *", "Mars/Olympus").is_err());
    }

    #[test]
    fn schedules_follow_the_configured_time_zone() {
        // 09:00 London in summer is 08:00 UTC.
        let schedule = Schedule::parse("0 0 9 * * *", "Europe/London").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-07-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            schedule.next_after(t).unwrap().to_rfc3339(),
            "2026-07-01T08:00:00+00:00"
        );
    }
}
