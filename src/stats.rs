//! Statistics from answer tables: a record in, `(force, period, measure, value)` rows out, plus
//! the checks of total rows against the rows they total.
//!
//! Pure functions of a record, shared by the projections (the stats view) and the diff module
//! (figure changes, total mismatches), so both read a table the same way.

use serde::{Deserialize, Serialize};

use crate::record::{AnswerRecord, Cell, Table};

/// One figure from a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statistic {
    pub force_id: String,
    pub force: String,
    /// "2021/22", "2023", or "" when the table gives no period.
    pub period: String,
    /// What is counted: qualifier cells and the value's column name, or the table's title.
    pub measure: String,
    pub value: f64,
    /// Which table of the answer (0-based) and which data row.
    pub table: usize,
    pub row: usize,
}

impl Statistic {
    /// The key under which the same figure is recognised in another answer.
    pub fn key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}",
            self.force_id,
            normalise_measure(&self.measure),
            self.period
        )
    }
}

pub fn normalise_measure(measure: &str) -> String {
    measure
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// "2023", "2021/22", "2021-22", "2023-2024", "April 2023": a time period, not a measure.
pub fn looks_like_period(s: &str) -> bool {
    let s = s.trim();
    if s.is_empty() || s.len() > 30 {
        return false;
    }
    let has_year = s
        .split(|c: char| !c.is_ascii_digit())
        .any(|d| d.len() == 4 && (d.starts_with("19") || d.starts_with("20")));
    let mostly_date = s
        .chars()
        .all(|c| c.is_ascii_digit() || "/- ".contains(c) || c.is_alphabetic());
    has_year && mostly_date && s.split_whitespace().count() <= 3
}

fn cell_value(cell: &Cell) -> Option<f64> {
    match cell {
        Cell::Int(n) => Some(*n as f64),
        Cell::Decimal(d) => Some(*d),
        _ => None,
    }
}

/// Every figure a record's tables give for a known police force (total rows excluded).
pub fn statistics(record: &AnswerRecord) -> Vec<Statistic> {
    let mut out = Vec::new();
    for (t, table) in record.answer.tables().enumerate() {
        let Some(force_col) = table.force_column else {
            continue;
        };
        // With no title, the answer's heading (or its question) says what the table counts, so
        // figures from unrelated untitled tables never share a measure.
        let title = table
            .title
            .clone()
            .unwrap_or_else(|| fallback_measure(record));
        for (r, row) in table.rows.iter().enumerate() {
            let Some(force) = row.force.as_ref().filter(|_| !row.total) else {
                continue;
            };
            let (period_cell, qualifiers) = row_context(table, row, force_col);
            for (c, cell) in row.cells.iter().enumerate() {
                if c == force_col {
                    continue;
                }
                let Some(value) = cell_value(cell) else {
                    continue;
                };
                let header = table.header.get(c).map(|h| h.trim()).unwrap_or("");
                let (period, measure) = if looks_like_period(header) {
                    let measure = if qualifiers.is_empty() {
                        title.clone()
                    } else {
                        qualifiers.join(": ")
                    };
                    (header.to_string(), measure)
                } else {
                    let mut parts = qualifiers.clone();
                    if !header.is_empty() {
                        parts.push(header.to_string());
                    }
                    if parts.is_empty() {
                        parts.push(title.clone());
                    }
                    (period_cell.clone().unwrap_or_default(), parts.join(": "))
                };
                out.push(Statistic {
                    force_id: force.id.clone(),
                    force: force.name.clone(),
                    period,
                    measure,
                    value,
                    table: t,
                    row: r,
                });
            }
        }
    }
    out
}

fn fallback_measure(record: &AnswerRecord) -> String {
    match record.api.as_ref().and_then(|a| a.heading.clone()) {
        Some(heading) => heading,
        None => {
            let words: Vec<&str> = record.question_text.split_whitespace().take(16).collect();
            words.join(" ")
        }
    }
}

/// The row's period (a text cell that looks like one) and its other text cells (qualifiers).
fn row_context(
    table: &Table,
    row: &crate::record::Row,
    force_col: usize,
) -> (Option<String>, Vec<String>) {
    let mut period = None;
    let mut qualifiers = Vec::new();
    for (c, cell) in row.cells.iter().enumerate() {
        if c == force_col {
            continue;
        }
        if let Cell::Text(text) = cell {
            let header = table
                .header
                .get(c)
                .map(|h| h.to_lowercase())
                .unwrap_or_default();
            if period.is_none() && (looks_like_period(text) || header.contains("year")) {
                period = Some(text.clone());
            } else {
                qualifiers.push(text.clone());
            }
        }
    }
    (period, qualifiers)
}

/// A total row that does not equal the sum of the rows it totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TotalMismatch {
    pub table: usize,
    /// The total row's index among the table's data rows.
    pub row: usize,
    pub column: String,
    /// The group the total covers ("2021/22"), or "" for the whole table.
    pub group: String,
    pub stated: f64,
    pub summed: f64,
    pub rows_summed: usize,
}

/// Checks each total row against the rows it covers: the rows sharing its period where the table
/// has a period column (one total per year), otherwise every other row of the table.
pub fn total_mismatches(record: &AnswerRecord) -> Vec<TotalMismatch> {
    let mut out = Vec::new();
    for (t, table) in record.answer.tables().enumerate() {
        let force_col = table.force_column;
        let group_of = |row: &crate::record::Row| -> String {
            match force_col {
                Some(fc) => row_context(table, row, fc).0.unwrap_or_default(),
                None => String::new(),
            }
        };
        for (r, total_row) in table.rows.iter().enumerate() {
            if !total_row.total {
                continue;
            }
            let group = group_of(total_row);
            let members: Vec<&crate::record::Row> = table
                .rows
                .iter()
                .filter(|row| !row.total && group_of(row) == group)
                .collect();
            if members.len() < 2 {
                continue;
            }
            for (c, cell) in total_row.cells.iter().enumerate() {
                let Some(stated) = cell_value(cell) else {
                    continue;
                };
                let values: Vec<f64> = members
                    .iter()
                    .filter_map(|row| row.cells.get(c).and_then(cell_value))
                    .collect();
                // Only columns that are numbers all the way down can be summed honestly.
                if values.len() != members.len() {
                    continue;
                }
                let summed: f64 = values.iter().sum();
                if (summed - stated).abs() > 0.5 {
                    out.push(TotalMismatch {
                        table: t,
                        row: r,
                        column: table.header.get(c).cloned().unwrap_or_default(),
                        group: group.clone(),
                        stated,
                        summed,
                        rows_summed: values.len(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_text_dump, Outcome};
    use crate::record::FeedOrder;

    fn sample(index: usize) -> AnswerRecord {
        let items = parse_text_dump(crate::BUNDLED_SAMPLE, FeedOrder::NewestFirst);
        match &items[index].outcome {
            Outcome::Parsed(r) => (**r).clone(),
            Outcome::Quarantined(q) => panic!("{}", q.reason),
        }
    }

    #[test]
    fn the_spit_hood_table_gives_force_year_rows() {
        let stats = statistics(&sample(2));
        assert_eq!(stats.len(), 130);
        let met: Vec<(&str, f64)> = stats
            .iter()
            .filter(|s| s.force_id == "metropolitan")
            .map(|s| (s.period.as_str(), s.value))
            .collect();
        assert_eq!(
            met,
            vec![
                ("2021/22", 1557.0),
                ("2022/23", 1421.0),
                ("2023/24", 1525.0)
            ]
        );
        assert_eq!(
            stats[0].measure,
            "Spit and bite guard: Total number of tactics"
        );
        assert!(total_mismatches(&sample(2)).is_empty());
    }

    #[test]
    fn the_driving_table_takes_periods_from_its_header() {
        let stats = statistics(&sample(3));
        assert_eq!(stats.len(), 44 * 3);
        let city: Vec<(&str, f64)> = stats
            .iter()
            .filter(|s| s.force_id == "city-of-london")
            .map(|s| (s.period.as_str(), s.value))
            .collect();
        assert_eq!(
            city,
            vec![("2022", 230.0), ("2023", 244.0), ("2024", 220.0)]
        );
        assert_eq!(
            stats[0].measure,
            "Drunken or Drug Influenced Driving Offence Volumes"
        );
        assert!(total_mismatches(&sample(3)).is_empty());
    }

    #[test]
    fn a_total_that_is_not_the_sum_is_found() {
        let mut record = sample(3);
        for block in &mut record.answer.blocks {
            if let crate::record::Block::Table(t) = block {
                let last = t.rows.len() - 1;
                t.rows[last].cells[2] = Cell::Int(60_000);
            }
        }
        let mismatches = total_mismatches(&record);
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].column, "2023");
        assert_eq!(mismatches[0].stated, 60_000.0);
        assert_eq!(mismatches[0].summed, 60_348.0);
    }

    #[test]
    fn periods_are_recognised() {
        for p in ["2023", "2021/22", "2021-22", "2023-2024", "April 2023"] {
            assert!(looks_like_period(p), "{p}");
        }
        for p in ["Spit and bite guard", "Total", "1,234", "Metropolitan"] {
            assert!(!looks_like_period(p), "{p}");
        }
    }
}
