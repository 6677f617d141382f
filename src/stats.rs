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
            let period_col = period_cell.as_ref().map(|(c, _)| *c);
            let period_cell = period_cell.map(|(_, text)| text);
            for (c, cell) in row.cells.iter().enumerate() {
                if c == force_col || Some(c) == period_col {
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

/// The row's period, with its column: a text cell that looks like one or sits under a "year"
/// header, or a year written as a number under a header that names one ("Year", "Financial
/// year" over 2023), which is a period and not a figure. And its other text cells (qualifiers).
fn row_context(
    table: &Table,
    row: &crate::record::Row,
    force_col: usize,
) -> (Option<(usize, String)>, Vec<String>) {
    let mut period = None;
    let mut qualifiers = Vec::new();
    for (c, cell) in row.cells.iter().enumerate() {
        if c == force_col {
            continue;
        }
        let header = table
            .header
            .get(c)
            .map(|h| h.to_lowercase())
            .unwrap_or_default();
        match cell {
            Cell::Text(text) => {
                if period.is_none() && (looks_like_period(text) || header.contains("year")) {
                    period = Some((c, text.clone()));
                } else {
                    qualifiers.push(text.clone());
                }
            }
            Cell::Int(year)
                if period.is_none() && names_a_year(&header) && (1900..=2100).contains(year) =>
            {
                period = Some((c, year.to_string()));
            }
            _ => {}
        }
    }
    (period, qualifiers)
}

/// "Year", "Calendar year", "Financial year", "Period": a header over years, not over counts
/// ("Arrests per year" counts).
fn names_a_year(header: &str) -> bool {
    let words: Vec<&str> = header.split_whitespace().collect();
    matches!(words.as_slice(), ["year" | "period"] | [_, "year"])
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
        // A row's period and the column it is in (none without a force column).
        let period_of = |row: &crate::record::Row| -> (String, Option<usize>) {
            match force_col.and_then(|fc| row_context(table, row, fc).0) {
                Some((c, text)) => (text, Some(c)),
                None => (String::new(), None),
            }
        };
        // Read once per table, not once per total row.
        let periods: Vec<(String, Option<usize>)> = table.rows.iter().map(period_of).collect();
        for ((r, total_row), (group, period_col)) in table.rows.iter().enumerate().zip(&periods) {
            if !total_row.total {
                continue;
            }
            let members: Vec<&crate::record::Row> = table
                .rows
                .iter()
                .zip(&periods)
                .filter(|(row, (period, _))| !row.total && period == group)
                .map(|(row, _)| row)
                .collect();
            if members.len() < 2 {
                continue;
            }
            for (c, cell) in total_row.cells.iter().enumerate() {
                // Years are not added up.
                if Some(c) == *period_col {
                    continue;
                }
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

    fn answer_with_table(lines: &str) -> AnswerRecord {
        let mut record = sample(3);
        let lines: Vec<&str> = lines.lines().collect();
        record.answer = crate::parse::parse_answer_lines(&lines);
        record
    }

    #[test]
    fn a_year_written_as_a_number_is_the_period_not_a_figure() {
        let record = answer_with_table(
            "Year | Police force | Count |\n2023 | Kent | 10 |\n2023 | Essex | 5 |\n2024 | Kent | 12 |\n2023 | Total | 16 |",
        );
        let got: Vec<(String, String, String, f64)> = statistics(&record)
            .into_iter()
            .map(|s| (s.force_id, s.period, s.measure, s.value))
            .collect();
        let want = |force: &str, period: &str, value: f64| {
            (
                force.to_string(),
                period.to_string(),
                "Count".to_string(),
                value,
            )
        };
        assert_eq!(
            got,
            vec![
                want("kent", "2023", 10.0),
                want("essex", "2023", 5.0),
                want("kent", "2024", 12.0)
            ]
        );
        // The 2023 total is checked against the 2023 rows only, and the years are not summed.
        let mismatches = total_mismatches(&record);
        assert_eq!(mismatches.len(), 1, "{mismatches:?}");
        assert_eq!(mismatches[0].column, "Count");
        assert_eq!(mismatches[0].group, "2023");
        assert_eq!((mismatches[0].stated, mismatches[0].summed), (16.0, 15.0));
    }

    #[test]
    fn a_count_per_year_stays_a_figure() {
        let record =
            answer_with_table("Police force | Arrests per year |\nKent | 1950 |\nEssex | 2010 |");
        let got: Vec<(String, String, f64)> = statistics(&record)
            .into_iter()
            .map(|s| (s.force_id, s.measure, s.value))
            .collect();
        assert_eq!(
            got,
            vec![
                ("kent".to_string(), "Arrests per year".to_string(), 1950.0),
                ("essex".to_string(), "Arrests per year".to_string(), 2010.0)
            ]
        );
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
