//! Helpers shared by integration tests. Include with `mod support;`; each test crate uses only
//! part of this, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod api_server;
pub mod binary;
pub mod smtp;

/// A `first_run_days` that reaches back before every record the tests serve (the fixtures and
/// the synthetic records are dated in the first half of 2025) on whatever day the tests run.
/// Fixed numbers of days made the tests fail once the records had aged past them.
pub fn first_run_days() -> u64 {
    let earliest = chrono::NaiveDate::from_ymd_opt(2024, 12, 1).unwrap_or_default();
    let today = chrono::Utc::now().date_naive();
    (today - earliest).num_days().max(1) as u64
}
