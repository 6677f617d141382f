//! The police-force gazetteer: names as written in answers in, one canonical force out.
//!
//! The 43 territorial forces of England and Wales plus British Transport Police, each with the
//! variants seen in real answers ("Metropolitan" = "Metropolitan Police" = "MPS"). Both parsers
//! use it to normalise table cells and to find forces mentioned in running text. A name it does
//! not know is never guessed at: callers keep it as written and report it.

use std::collections::HashMap;
use std::sync::OnceLock;

/// One canonical police force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Force {
    /// Stable identifier used in records and indexes (never changes once shipped).
    pub id: &'static str,
    /// The force's official name, used for display and as the canonical name in records.
    pub name: &'static str,
    /// Short names and variants that identify the force once normalised (see [`normalise_key`]).
    /// The base area name (the official name minus "Police"/"Constabulary") is always included.
    aliases: &'static [&'static str],
    /// Abbreviations that are matched case-sensitively, as written (`MPS`, `GMP`).
    acronyms: &'static [&'static str],
}

/// The forces, in the order the Home Office lists them in its statistical tables.
pub const FORCES: &[Force] = &[
    f(
        "avon-and-somerset",
        "Avon and Somerset Constabulary",
        &["avon and somerset"],
        &[],
    ),
    f(
        "bedfordshire",
        "Bedfordshire Police",
        &["bedfordshire"],
        &[],
    ),
    f(
        "cambridgeshire",
        "Cambridgeshire Constabulary",
        &["cambridgeshire"],
        &[],
    ),
    f("cheshire", "Cheshire Constabulary", &["cheshire"], &[]),
    f(
        "city-of-london",
        "City of London Police",
        &["city of london"],
        &[],
    ),
    f("cleveland", "Cleveland Police", &["cleveland"], &[]),
    f("cumbria", "Cumbria Constabulary", &["cumbria"], &[]),
    f(
        "derbyshire",
        "Derbyshire Constabulary",
        &["derbyshire"],
        &[],
    ),
    f(
        "devon-and-cornwall",
        "Devon and Cornwall Police",
        &["devon and cornwall"],
        &[],
    ),
    f("dorset", "Dorset Police", &["dorset"], &[]),
    f(
        "durham",
        "Durham Constabulary",
        &["durham", "county durham"],
        &[],
    ),
    f("dyfed-powys", "Dyfed-Powys Police", &["dyfed powys"], &[]),
    f("essex", "Essex Police", &["essex"], &[]),
    f(
        "gloucestershire",
        "Gloucestershire Constabulary",
        &["gloucestershire"],
        &[],
    ),
    f(
        "greater-manchester",
        "Greater Manchester Police",
        &["greater manchester"],
        &["GMP"],
    ),
    f("gwent", "Gwent Police", &["gwent"], &[]),
    f(
        "hampshire",
        "Hampshire and Isle of Wight Constabulary",
        &["hampshire and isle of wight", "hampshire"],
        &[],
    ),
    f(
        "hertfordshire",
        "Hertfordshire Constabulary",
        &["hertfordshire"],
        &[],
    ),
    f("humberside", "Humberside Police", &["humberside"], &[]),
    f("kent", "Kent Police", &["kent"], &[]),
    f(
        "lancashire",
        "Lancashire Constabulary",
        &["lancashire"],
        &[],
    ),
    f(
        "leicestershire",
        "Leicestershire Police",
        &["leicestershire"],
        &[],
    ),
    f(
        "lincolnshire",
        "Lincolnshire Police",
        &["lincolnshire"],
        &[],
    ),
    f("merseyside", "Merseyside Police", &["merseyside"], &[]),
    f(
        "metropolitan",
        "Metropolitan Police Service",
        &[
            "metropolitan",
            "metropolitan police service",
            "met",
            "met police",
        ],
        &["MPS"],
    ),
    f("norfolk", "Norfolk Constabulary", &["norfolk"], &[]),
    f("north-wales", "North Wales Police", &["north wales"], &[]),
    f(
        "north-yorkshire",
        "North Yorkshire Police",
        &["north yorkshire"],
        &[],
    ),
    f(
        "northamptonshire",
        "Northamptonshire Police",
        &["northamptonshire"],
        &[],
    ),
    f("northumbria", "Northumbria Police", &["northumbria"], &[]),
    f(
        "nottinghamshire",
        "Nottinghamshire Police",
        &["nottinghamshire"],
        &[],
    ),
    f("south-wales", "South Wales Police", &["south wales"], &[]),
    f(
        "south-yorkshire",
        "South Yorkshire Police",
        &["south yorkshire"],
        &[],
    ),
    f(
        "staffordshire",
        "Staffordshire Police",
        &["staffordshire"],
        &[],
    ),
    f("suffolk", "Suffolk Constabulary", &["suffolk"], &[]),
    f("surrey", "Surrey Police", &["surrey"], &[]),
    f("sussex", "Sussex Police", &["sussex"], &[]),
    f(
        "thames-valley",
        "Thames Valley Police",
        &["thames valley"],
        &["TVP"],
    ),
    f(
        "warwickshire",
        "Warwickshire Police",
        &["warwickshire"],
        &[],
    ),
    f("west-mercia", "West Mercia Police", &["west mercia"], &[]),
    f(
        "west-midlands",
        "West Midlands Police",
        &["west midlands"],
        &["WMP"],
    ),
    f(
        "west-yorkshire",
        "West Yorkshire Police",
        &["west yorkshire"],
        &[],
    ),
    f("wiltshire", "Wiltshire Police", &["wiltshire"], &[]),
    f(
        "british-transport-police",
        "British Transport Police",
        &["british transport"],
        &["BTP"],
    ),
];

const fn f(
    id: &'static str,
    name: &'static str,
    aliases: &'static [&'static str],
    acronyms: &'static [&'static str],
) -> Force {
    Force {
        id,
        name,
        aliases,
        acronyms,
    }
}

/// Words that name the kind of organisation rather than the area; stripped before lookup so that
/// "Kent", "Kent Police" and "Kent Constabulary" are one key.
const ORGANISATION_SUFFIXES: &[&str] = &[
    " police service",
    " police force",
    " police area",
    " force area",
    " constabulary",
    " police",
];

/// Reduces a force name as written to its lookup key: lower case, `&` as `and`, hyphens and runs of
/// whitespace as one space, a leading "the" and a trailing organisation word dropped.
pub fn normalise_key(written: &str) -> String {
    let lowered = written.trim().to_lowercase().replace('&', " and ");
    let spaced: String = lowered
        .chars()
        .map(|c| if c == '-' || c == '\u{2013}' { ' ' } else { c })
        .collect();
    let mut key = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(rest) = key.strip_prefix("the ") {
        key = rest.to_string();
    }
    for suffix in ORGANISATION_SUFFIXES {
        if let Some(rest) = key.strip_suffix(suffix) {
            if !rest.is_empty() {
                key = rest.to_string();
                break;
            }
        }
    }
    key
}

fn alias_index() -> &'static HashMap<String, &'static Force> {
    static INDEX: OnceLock<HashMap<String, &'static Force>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = HashMap::new();
        for force in FORCES {
            index.insert(normalise_key(force.name), force);
            for alias in force.aliases {
                index.insert(normalise_key(alias), force);
            }
        }
        index
    })
}

/// The canonical force a name refers to, or `None` when the name is not a force we know.
pub fn lookup(written: &str) -> Option<&'static Force> {
    let trimmed = written.trim();
    if let Some(force) = FORCES.iter().find(|f| f.acronyms.contains(&trimmed)) {
        return Some(force);
    }
    alias_index().get(&normalise_key(trimmed)).copied()
}

/// The force with this stable id.
pub fn by_id(id: &str) -> Option<&'static Force> {
    FORCES.iter().find(|f| f.id == id)
}

/// Indexes into [`text_patterns`] by the pattern's first byte, in the same (longest first)
/// order: a capitalised word is checked against the few forms that start with its letter, not
/// all of them (this search was an eighth of the fetch path's time).
fn patterns_by_first_byte() -> &'static [Vec<usize>] {
    static INDEX: OnceLock<Vec<Vec<usize>>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = vec![Vec::new(); 256];
        for (i, (form, _)) in text_patterns().iter().enumerate() {
            if let Some(&first) = form.as_bytes().first() {
                index[usize::from(first)].push(i);
            }
        }
        index
    })
}

/// Surface forms searched for in running text, longest first so that "Greater Manchester Police"
/// wins over "Greater Manchester". Matching is case-sensitive: force names are proper nouns, and
/// "met" or "kent" in lower case are ordinary words far more often than forces.
fn text_patterns() -> &'static [(String, &'static Force)] {
    static PATTERNS: OnceLock<Vec<(String, &'static Force)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let mut patterns: Vec<(String, &'static Force)> = Vec::new();
        let mut push = |form: String, force: &'static Force| {
            if !patterns.iter().any(|(p, _)| *p == form) {
                patterns.push((form, force));
            }
        };
        for force in FORCES {
            push(force.name.to_string(), force);
            for acronym in force.acronyms {
                push(acronym.to_string(), force);
            }
            for alias in force.aliases {
                // "met" as a bare word is too common in English to be read as the force.
                if *alias == "met" {
                    continue;
                }
                let titled = title_case(alias);
                for variant in spelling_variants(&titled) {
                    push(variant.clone(), force);
                    for suffix in [" Police", " Constabulary"] {
                        push(format!("{variant}{suffix}"), force);
                    }
                }
            }
        }
        patterns.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        patterns
    })
}

fn title_case(alias: &str) -> String {
    alias
        .split(' ')
        .map(|word| match word {
            "and" | "of" => word.to_string(),
            _ => {
                let mut chars = word.chars();
                match chars.next() {
                    Some(first) => first.to_uppercase().chain(chars).collect(),
                    None => String::new(),
                }
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "Avon and Somerset" is also written "Avon & Somerset"; "Dyfed Powys" also "Dyfed-Powys".
fn spelling_variants(titled: &str) -> Vec<String> {
    let mut variants = vec![titled.to_string()];
    if titled.contains(" and ") {
        variants.push(titled.replace(" and ", " & "));
    }
    if titled == "Dyfed Powys" {
        variants.push("Dyfed-Powys".to_string());
    }
    variants
}

/// A force found in running text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMention {
    pub force: &'static Force,
    /// Byte offset of the mention in the text searched.
    pub offset: usize,
    /// The words as written.
    pub written: String,
}

/// Every force mentioned in `text`, in order of appearance, without overlaps (the longest form
/// at a position wins). Only whole words match: "Kent" is not found in "Kentish".
pub fn mentions_in(text: &str) -> Vec<TextMention> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    // A force's name starts a word with a capital letter: only those places are tried, found
    // eight bytes at a time (most of an answer is lower case: scanning it a byte at a time was
    // a tenth of the fetching thread's time).
    while let Some(i) = next_capital(bytes, from) {
        from = i + 1;
        if i > 0 && WORD_BYTE[usize::from(bytes[i - 1])] {
            continue;
        }
        if let Some((form, force)) = form_at(text, i) {
            found.push(TextMention {
                force,
                offset: i,
                written: form.clone(),
            });
            from = i + form.len();
        }
    }
    found
}

/// The longest form of a force's name written at byte `i` of `text` and ending a word.
fn form_at(text: &str, i: usize) -> Option<&'static (String, &'static Force)> {
    let rest = text.get(i..)?;
    let first = *rest.as_bytes().first()?;
    let patterns = text_patterns();
    patterns_by_first_byte()[usize::from(first)]
        .iter()
        .map(|&p| &patterns[p])
        .find(|(form, _)| {
            rest.starts_with(form.as_str())
                && rest
                    .as_bytes()
                    .get(form.len())
                    .is_none_or(|b| !is_word_byte(*b))
        })
}

/// The first ASCII capital letter at or after `from`.
fn next_capital(bytes: &[u8], mut from: usize) -> Option<usize> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    while let Some(chunk) = bytes.get(from..from + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Per byte, without carries between bytes: bit 7 set when the byte is in 'A'..='Z'.
        let y = x & LOW7;
        let at_least_a = y + ONES * u64::from(0x80 - b'A');
        let past_z = y + ONES * u64::from(0x80 - b'Z' - 1);
        let capitals = at_least_a & !past_z & !x & HIGH;
        if capitals != 0 {
            return Some(from + (capitals.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    bytes
        .get(from..)?
        .iter()
        .position(u8::is_ascii_uppercase)
        .map(|at| from + at)
}

/// [`is_word_byte`] as a table.
const WORD_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_word_byte(b as u8);
        b += 1;
    }
    table
};

const fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_forty_four_forces_with_unique_ids() {
        assert_eq!(FORCES.len(), 44);
        let mut ids: Vec<_> = FORCES.iter().map(|f| f.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 44);
    }

    #[test]
    fn variants_seen_in_answers_resolve_to_one_force() {
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "Metropolitan",
                    "Metropolitan Police",
                    "MPS",
                    "Metropolitan Police Service",
                ],
                "metropolitan",
            ),
            (&["Hampshire", "Hampshire and Isle of Wight"], "hampshire"),
            (
                &["City of London", "City of London Police"],
                "city-of-london",
            ),
            (
                &["Avon & Somerset", "Avon and Somerset"],
                "avon-and-somerset",
            ),
            (
                &["Dyfed-Powys", "Dyfed Powys", "Dyfed-Powys Police"],
                "dyfed-powys",
            ),
            (
                &["Devon & Cornwall", "Devon and Cornwall Police"],
                "devon-and-cornwall",
            ),
            (
                &["Greater Manchester Police", "Greater Manchester", "GMP"],
                "greater-manchester",
            ),
            (
                &["British Transport Police", "BTP"],
                "british-transport-police",
            ),
            (&["Durham", "Durham Constabulary"], "durham"),
            (&["  north   wales  "], "north-wales"),
        ];
        for (variants, id) in cases {
            for variant in *variants {
                assert_eq!(
                    lookup(variant).map(|f| f.id),
                    Some(*id),
                    "variant {variant:?}"
                );
            }
        }
    }

    #[test]
    fn non_forces_are_not_guessed() {
        for name in [
            "Total England and Wales",
            "44 Police Force Areas Total",
            "Police Scotland",
            "Wales",
            "",
            "mps",
        ] {
            assert_eq!(lookup(name).map(|f| f.id), None, "{name:?}");
        }
    }

    /// The scan before capitals were found eight bytes at a time: word start by word start.
    fn mentions_in_reference(text: &str) -> Vec<TextMention> {
        let mut found = Vec::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        loop {
            while i < bytes.len() && !WORD_BYTE[usize::from(bytes[i])] {
                i += 1;
            }
            if i >= bytes.len() {
                break;
            }
            if bytes[i].is_ascii_uppercase() {
                if let Some((form, force)) = form_at(text, i) {
                    found.push(TextMention {
                        force,
                        offset: i,
                        written: form.clone(),
                    });
                    i += form.len();
                    continue;
                }
            }
            while i < bytes.len() && WORD_BYTE[usize::from(bytes[i])] {
                i += 1;
            }
        }
        found
    }

    fn positions(mentions: &[TextMention]) -> Vec<(usize, &'static str, String)> {
        mentions
            .iter()
            .map(|m| (m.offset, m.force.id, m.written.clone()))
            .collect()
    }

    proptest::proptest! {
        /// Force names (first letters A to W), their pieces, capitals, word joiners and
        /// non-ASCII letters run together: the eight-byte scan finds what the byte-by-byte scan
        /// found.
        #[test]
        fn mentions_match_the_reference(
            pieces in proptest::collection::vec(
                "(Avon and Somerset|Kent|Kent Police|Essex|Metropolitan|MPS|West Midlands|Greater Manchester|South Wales|Wales|Police|[A-Z]|[a-z]{1,3}|É|é|_|-|[ .,;(\\n]|[0-9])",
                0..40,
            ),
        ) {
            let text: String = pieces.concat();
            proptest::prop_assert_eq!(
                positions(&mentions_in(&text)),
                positions(&mentions_in_reference(&text))
            );
        }
    }

    #[test]
    fn mentions_prefer_the_longest_form_and_respect_word_boundaries() {
        let text = "taskforces in (MPS, Merseyside, West Midlands and Greater Manchester Police) as well as the British Transport Police. Kentish towns. England and Wales.";
        let ids: Vec<_> = mentions_in(text).iter().map(|m| m.force.id).collect();
        assert_eq!(
            ids,
            vec![
                "metropolitan",
                "merseyside",
                "west-midlands",
                "greater-manchester",
                "british-transport-police"
            ]
        );
        let gm = mentions_in(text)
            .into_iter()
            .find(|m| m.force.id == "greater-manchester")
            .map(|m| m.written);
        assert_eq!(gm.as_deref(), Some("Greater Manchester Police"));
    }
}
