//! Answer HTML (the API's `answerText`) in, paragraphs, list items and tables out.
//!
//! A small tolerant reader rather than a full HTML5 parser: answers use a handful of tags (`p`,
//! `br`, `ul`/`ol`/`li`, `table`/`tr`/`td`/`th`, inline formatting), and broken markup must
//! degrade to text, never to an error or a panic. Tables go through the same model as text dumps
//! (title, header, typed rows, notes, force column), so both sources give the same rows.

use crate::record::{AnswerBody, Block};
use crate::text::collapse_whitespace;

/// Parses answer HTML into blocks. Never fails: anything unrecognised becomes text.
pub fn parse_answer_html(html: &str) -> AnswerBody {
    let mut builder = Builder::default();
    for token in Tokenizer::new(html) {
        builder.token(token);
    }
    builder.finish()
}

#[derive(Debug, PartialEq)]
enum Token<'a> {
    Text(&'a str),
    Open { name: String, attrs: &'a str },
    Close { name: String },
}

struct Tokenizer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Tokenizer<'a> {
    fn new(src: &'a str) -> Self {
        Tokenizer { src, pos: 0 }
    }
}

impl<'a> Iterator for Tokenizer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let rest = &self.src[self.pos..];
            if rest.is_empty() {
                return None;
            }
            if let Some(after) = rest.strip_prefix("<!--") {
                let end = after.find("-->").map_or(rest.len(), |i| 4 + i + 3);
                self.pos += end;
                continue;
            }
            if let Some(after_lt) = rest.strip_prefix('<') {
                let is_tag = after_lt
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '!' || c == '?');
                if is_tag {
                    match tag_end(rest) {
                        Some(end) => {
                            self.pos += end + 1;
                            let inner = &rest[1..end];
                            if inner.starts_with('!') || inner.starts_with('?') {
                                continue;
                            }
                            return Some(parse_tag(inner));
                        }
                        // `<` with no closing `>`: the rest is text, not a tag.
                        None => {
                            self.pos = self.src.len();
                            return Some(Token::Text(rest));
                        }
                    }
                }
                // A lone `<` (as in "a < b") is text.
                let next_lt = after_lt.find('<').map_or(rest.len(), |i| i + 1);
                self.pos += next_lt;
                return Some(Token::Text(&rest[..next_lt]));
            }
            let end = rest.find('<').unwrap_or(rest.len());
            self.pos += end;
            return Some(Token::Text(&rest[..end]));
        }
    }
}

/// Index of the `>` closing the tag that starts `s`, skipping `>` inside quoted attributes.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"') | (None, '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            (None, '<') => return None,
            _ => {}
        }
    }
    None
}

fn parse_tag(inner: &str) -> Token<'_> {
    let (closing, body) = match inner.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, inner),
    };
    let name_end = body
        .find(|c: char| c.is_whitespace() || c == '/')
        .unwrap_or(body.len());
    let name = body[..name_end].to_ascii_lowercase();
    if closing {
        Token::Close { name }
    } else {
        Token::Open {
            name,
            attrs: &body[name_end..],
        }
    }
}

/// Value of a numeric attribute such as `colspan="3"`.
fn numeric_attr(attrs: &str, attr: &str) -> Option<usize> {
    let lower = attrs.to_ascii_lowercase();
    let at = lower.find(attr)?;
    let rest = lower[at + attr.len()..].trim_start().strip_prefix('=')?;
    let digits: String = rest
        .trim_start()
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[derive(Default)]
struct TableState {
    rows: Vec<Vec<String>>,
    row: Option<Vec<String>>,
    cell: Option<String>,
    colspan: usize,
}

#[derive(Default)]
struct Builder {
    blocks: Vec<Block>,
    text: String,
    in_list_item: bool,
    /// Open tables, innermost last; a nested table's text goes into the outer cell.
    tables: Vec<TableState>,
    skip_depth: usize,
}

impl Builder {
    fn token(&mut self, token: Token<'_>) {
        match token {
            Token::Text(raw) => {
                if self.skip_depth == 0 {
                    let decoded = decode_entities(raw);
                    match self.tables.last_mut() {
                        None => self.text.push_str(&decoded),
                        Some(table) => match table.cell.as_mut() {
                            Some(cell) => cell.push_str(&decoded),
                            // Text inside a table but outside any cell: kept as a row of its own
                            // when it has content.
                            None => {
                                let trimmed = collapse_whitespace(&decoded);
                                if !trimmed.is_empty() {
                                    table.rows.push(vec![trimmed]);
                                }
                            }
                        },
                    }
                }
            }
            Token::Open { name, attrs } => self.open(&name, attrs),
            Token::Close { name } => self.close(&name),
        }
    }

    fn open(&mut self, name: &str, attrs: &str) {
        match name {
            "script" | "style" => self.skip_depth += 1,
            "table" => {
                if self.tables.is_empty() {
                    self.end_paragraph();
                }
                self.tables.push(TableState::default());
            }
            "tr" => {
                if let Some(table) = self.tables.last_mut() {
                    end_row(table);
                    table.row = Some(Vec::new());
                }
            }
            "td" | "th" => {
                if let Some(table) = self.tables.last_mut() {
                    end_cell(table);
                    if table.row.is_none() {
                        table.row = Some(Vec::new());
                    }
                    table.cell = Some(String::new());
                    table.colspan = numeric_attr(attrs, "colspan").unwrap_or(1).clamp(1, 64);
                } else {
                    self.text.push(' ');
                }
            }
            "br" => self.line_break(),
            "li" => {
                self.line_break();
                self.in_list_item = true;
            }
            "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul" | "ol" | "blockquote"
            | "section" | "article" | "header" | "footer" | "dl" | "dt" | "dd" | "caption" => {
                self.line_break()
            }
            _ => {}
        }
    }

    fn close(&mut self, name: &str) {
        match name {
            "script" | "style" => self.skip_depth = self.skip_depth.saturating_sub(1),
            "table" => {
                if let Some(mut table) = self.tables.pop() {
                    end_row(&mut table);
                    let rendered = finish_table(table);
                    match self.tables.last_mut() {
                        // A nested table's text joins the outer cell, or, when the markup put
                        // it outside any cell, becomes a row of its own (as stray text does).
                        Some(outer) => match outer.cell.as_mut() {
                            Some(cell) => {
                                cell.push(' ');
                                cell.push_str(&rendered.text);
                            }
                            None => {
                                let text = collapse_whitespace(&rendered.text);
                                if !text.is_empty() {
                                    end_row(outer);
                                    outer.rows.push(vec![text]);
                                }
                            }
                        },
                        None => self.blocks.extend(rendered.blocks),
                    }
                }
            }
            "tr" => {
                if let Some(table) = self.tables.last_mut() {
                    end_row(table);
                }
            }
            "td" | "th" => {
                if let Some(table) = self.tables.last_mut() {
                    end_cell(table);
                }
            }
            "li" => {
                self.line_break();
                self.in_list_item = false;
            }
            "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul" | "ol" | "blockquote"
            | "section" | "article" | "header" | "footer" | "dl" | "dt" | "dd" | "caption" => {
                self.line_break()
            }
            _ => {}
        }
    }

    /// Ends the current paragraph or cell line. Inside a cell a break is just a space.
    fn line_break(&mut self) {
        match self.tables.last_mut() {
            Some(table) => {
                if let Some(cell) = table.cell.as_mut() {
                    cell.push(' ');
                }
            }
            None => self.end_paragraph(),
        }
    }

    fn end_paragraph(&mut self) {
        let text = collapse_whitespace(&self.text);
        self.text.clear();
        if text.is_empty() {
            return;
        }
        self.blocks.push(if self.in_list_item {
            Block::ListItem { text }
        } else {
            Block::Paragraph { text }
        });
    }

    fn finish(mut self) -> AnswerBody {
        // Unclosed tables at the end of broken HTML still yield their rows.
        while let Some(mut table) = self.tables.pop() {
            end_row(&mut table);
            let rendered = finish_table(table);
            match self.tables.last_mut().and_then(|t| t.cell.as_mut()) {
                Some(cell) => cell.push_str(&rendered.text),
                None => {
                    self.end_paragraph();
                    self.blocks.extend(rendered.blocks);
                }
            }
        }
        self.end_paragraph();
        AnswerBody {
            blocks: self.blocks,
        }
    }
}

fn end_cell(table: &mut TableState) {
    if let Some(cell) = table.cell.take() {
        let row = table.row.get_or_insert_with(Vec::new);
        row.push(collapse_whitespace(&cell));
        for _ in 1..table.colspan {
            row.push(String::new());
        }
        table.colspan = 1;
    }
}

fn end_row(table: &mut TableState) {
    end_cell(table);
    if let Some(row) = table.row.take() {
        if row.iter().any(|c| !c.is_empty()) {
            table.rows.push(row);
        }
    }
}

struct RenderedTable {
    blocks: Vec<Block>,
    /// The table as plain text, for nesting inside another table's cell.
    text: String,
}

fn finish_table(table: TableState) -> RenderedTable {
    let text = table
        .rows
        .iter()
        .map(|r| r.join(" "))
        .collect::<Vec<_>>()
        .join(" ");
    let blocks = match super::table_from_rows(table.rows.clone()) {
        Some(t) => vec![Block::Table(t)],
        // A "table" of single cells is layout, not data: keep its text as paragraphs.
        None => table
            .rows
            .into_iter()
            .map(|r| r.join(" ").trim().to_string())
            .filter(|t| !t.is_empty())
            .map(|text| Block::Paragraph { text })
            .collect(),
    };
    RenderedTable { blocks, text }
}

/// Decodes character references. Unknown or malformed ones are left as written.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest[1..]
            .char_indices()
            .take(12)
            .find(|(_, c)| *c == ';')
            .map(|(i, _)| i + 1);
        let decoded = end.and_then(|end| decode_entity(&rest[1..end]).map(|c| (c, end)));
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code).filter(|c| *c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ndash" => '\u{2013}',
        "mdash" => '\u{2014}',
        "lsquo" => '\u{2018}',
        "rsquo" => '\u{2019}',
        "ldquo" => '\u{201c}',
        "rdquo" => '\u{201d}',
        "hellip" => '\u{2026}',
        "pound" => '£',
        "euro" => '€',
        "bull" => '\u{2022}',
        "middot" => '\u{b7}',
        "deg" => '°',
        "frac12" => '½',
        "frac14" => '¼',
        "frac34" => '¾',
        "copy" => '©',
        "reg" => '®',
        "times" => '×',
        "sect" => '§',
        "shy" => '\u{ad}',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Cell;

    fn texts(body: &AnswerBody) -> Vec<String> {
        body.blocks
            .iter()
            .map(|b| match b {
                Block::Paragraph { text } => format!("p:{text}"),
                Block::ListItem { text } => format!("li:{text}"),
                Block::Table(t) => format!("table:{}x{}", t.rows.len(), t.header.len()),
            })
            .collect()
    }

    #[test]
    fn paragraphs_and_list_items_are_kept_apart() {
        let body = parse_answer_html(
            "<p>First &amp; foremost.</p><p>Second<br>line.</p><ul><li>One</li><li>Two &ndash; <strong>bold</strong></li></ul><p>After.</p>",
        );
        assert_eq!(
            texts(&body),
            vec![
                "p:First & foremost.",
                "p:Second",
                "p:line.",
                "li:One",
                "li:Two \u{2013} bold",
                "p:After."
            ]
        );
    }

    #[test]
    fn a_table_nested_outside_any_cell_keeps_its_text() {
        // Browsers hoist such a table out; we keep its text as a row of the outer table.
        for html in [
            "<table><tr><td>Force</td><td>2024</td></tr><table><tr><td>stray inner words</td></tr></table><tr><td>Kent</td><td>5</td></tr></table>",
            "<table><tr><td>Force</td><td>2024</td><table><tr><td>stray inner words</td></tr></table></tr></table>",
        ] {
            let body = parse_answer_html(html);
            assert!(
                body.plain_text().contains("stray inner words"),
                "{html}: {:?}",
                body.blocks
            );
        }
    }

    #[test]
    fn tables_become_typed_rows_with_forces() {
        let html = r#"<p>The figures:</p><table><thead><tr><th>Force</th><th colspan="1">2023</th><th>2024</th></tr></thead>
            <tbody><tr><td><p>Metropolitan Police</p></td><td>1,234</td><td>1,300</td></tr>
            <tr><td>Kent</td><td>56</td><td>&nbsp;</td></tr>
            <tr><td>Total</td><td>1,290</td><td>1,300</td></tr></tbody></table><p>Source: police.</p>"#;
        let body = parse_answer_html(html);
        assert_eq!(
            texts(&body),
            vec!["p:The figures:", "table:3x3", "p:Source: police."]
        );
        let table = body.tables().next().unwrap();
        assert_eq!(table.header, vec!["Force", "2023", "2024"]);
        assert_eq!(table.force_column, Some(0));
        assert_eq!(table.rows[0].cells[1], Cell::Int(1234));
        assert_eq!(table.rows[0].force.as_ref().unwrap().id, "metropolitan");
        assert_eq!(table.rows[1].cells[2], Cell::Empty);
        assert!(table.rows[2].total);
    }

    #[test]
    fn colspan_keeps_columns_aligned() {
        let html = "<table><tr><td colspan=\"2\">Title row</td></tr><tr><td>Area</td><td>Count</td></tr><tr><td>Kent</td><td>5</td></tr></table>";
        let table = parse_answer_html(html).tables().next().cloned().unwrap();
        assert_eq!(table.title.as_deref(), Some("Title row"));
        assert_eq!(table.header, vec!["Area", "Count"]);
        assert_eq!(table.rows.len(), 1);
    }

    #[test]
    fn broken_html_degrades_to_text() {
        for html in [
            "<p>unclosed paragraph",
            "<p>a < b and c > d</p>",
            "<table><tr><td>Kent<td>5<tr><td>Essex<td>6",
            "text <b",
            "<<<>>>",
            "<p attr=\"x>y\">quoted</p>",
            "&amp &#xZZ; &#0; &unknown; &#1114112;",
            "<!-- comment",
            "<script>var x = '<p>';</script><p>after</p>",
        ] {
            let body = parse_answer_html(html);
            let _ = body.plain_text();
        }
        assert_eq!(
            texts(&parse_answer_html("<p>a < b and c > d</p>")),
            vec!["p:a < b and c > d"]
        );
        assert_eq!(
            texts(&parse_answer_html(
                "<script>var x = '<p>';</script><p>after</p>"
            )),
            vec!["p:after"]
        );
        let table =
            parse_answer_html("<table><tr><td>Area<td>N<tr><td>Kent<td>5<tr><td>Essex<td>6");
        assert_eq!(texts(&table), vec!["table:2x2"]);
        assert_eq!(
            decode_entities("&amp &#xZZ; &#0; &unknown; &#1114112; &pound;5"),
            "&amp &#xZZ; &#0; &unknown; &#1114112; £5"
        );
    }
}
