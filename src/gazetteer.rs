//! Named places that tracked lists follow: text in, entities (police force areas, London
//! boroughs, a tracker's own extra names) out.
//!
//! Matching is case-sensitive and whole-word, longest name first, like force mentions: these are
//! proper nouns, and "Sutton" in "Sutton and Cheam" is still Sutton.

use std::collections::BTreeMap;

use crate::forces;

/// The 32 London boroughs, with the variants seen in answers.
const LONDON_BOROUGHS: &[(&str, &[&str])] = &[
    ("Barking and Dagenham", &["Barking & Dagenham"]),
    ("Barnet", &[]),
    ("Bexley", &[]),
    ("Brent", &[]),
    ("Bromley", &[]),
    ("Camden", &[]),
    ("Croydon", &[]),
    ("Ealing", &[]),
    ("Enfield", &[]),
    ("Greenwich", &["Royal Borough of Greenwich"]),
    ("Hackney", &[]),
    ("Hammersmith and Fulham", &["Hammersmith & Fulham"]),
    ("Haringey", &[]),
    ("Harrow", &[]),
    ("Havering", &[]),
    ("Hillingdon", &[]),
    ("Hounslow", &[]),
    ("Islington", &[]),
    (
        "Kensington and Chelsea",
        &[
            "Kensington & Chelsea",
            "Royal Borough of Kensington and Chelsea",
        ],
    ),
    ("Kingston upon Thames", &["Kingston"]),
    ("Lambeth", &[]),
    ("Lewisham", &[]),
    ("Merton", &[]),
    ("Newham", &[]),
    ("Redbridge", &[]),
    ("Richmond upon Thames", &["Richmond"]),
    ("Southwark", &[]),
    ("Sutton", &[]),
    ("Tower Hamlets", &[]),
    ("Waltham Forest", &[]),
    ("Wandsworth", &[]),
    ("Westminster", &["City of Westminster"]),
];

/// One entity of the gazetteer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entity {
    /// Stable id: `force:gwent`, `borough:croydon`, `extra:<name>`.
    pub id: String,
    /// How users read it: "Gwent", "Croydon", "British Transport Police".
    pub label: String,
}

/// A set of names to search text for.
#[derive(Debug, Clone)]
pub struct Gazetteer {
    /// (surface form, entity), longest form first.
    forms: Vec<(String, Entity)>,
}

fn slug(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The area a force covers, as answers name it ("Gwent", "Greater Manchester").
fn force_label(force: &forces::Force) -> String {
    if force.id == "british-transport-police" {
        return force.name.to_string();
    }
    let mut label = force.name.to_string();
    for suffix in [" Police Service", " Constabulary", " Police"] {
        if let Some(rest) = label.strip_suffix(suffix) {
            label = rest.to_string();
            break;
        }
    }
    label
}

impl Gazetteer {
    /// Police force areas and London boroughs, plus `extra` names (each its own entity).
    pub fn standard(extra: &[String]) -> Gazetteer {
        let mut map: BTreeMap<String, Entity> = BTreeMap::new();
        for force in forces::FORCES {
            let entity = Entity {
                id: format!("force:{}", force.id),
                label: force_label(force),
            };
            for form in force_forms(force) {
                map.entry(form).or_insert_with(|| entity.clone());
            }
        }
        for (name, variants) in LONDON_BOROUGHS {
            let entity = Entity {
                id: format!("borough:{}", slug(name)),
                label: name.to_string(),
            };
            for form in std::iter::once(*name).chain(variants.iter().copied()) {
                map.entry(form.to_string())
                    .or_insert_with(|| entity.clone());
                map.entry(format!("London Borough of {form}"))
                    .or_insert_with(|| entity.clone());
            }
        }
        for name in extra {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            map.insert(
                name.to_string(),
                Entity {
                    id: format!("extra:{}", slug(name)),
                    label: name.to_string(),
                },
            );
        }
        let mut forms: Vec<(String, Entity)> = map.into_iter().collect();
        forms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Gazetteer { forms }
    }

    /// Entities named in `text`, without repeats, in order of first mention.
    pub fn find(&self, text: &str) -> Vec<Entity> {
        let bytes = text.as_bytes();
        let mut found: Vec<Entity> = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let at_start = i == 0 || !is_word_byte(bytes[i - 1]);
            if at_start && bytes[i].is_ascii_uppercase() {
                let rest = &text[i..];
                if let Some((form, entity)) = self.forms.iter().find(|(form, _)| {
                    rest.starts_with(form.as_str())
                        && rest
                            .as_bytes()
                            .get(form.len())
                            .is_none_or(|b| !is_word_byte(*b))
                }) {
                    if !found.contains(entity) {
                        found.push(entity.clone());
                    }
                    i += form.len();
                    continue;
                }
            }
            i += 1;
        }
        found
    }
}

/// Surface forms of a force: its name, its area names (with "&"/"and" variants), acronyms.
fn force_forms(force: &forces::Force) -> Vec<String> {
    let mut forms = vec![force.name.to_string()];
    let label = force_label(force);
    forms.push(label.clone());
    forms.push(format!("{label} Police"));
    if label.contains(" and ") {
        forms.push(label.replace(" and ", " & "));
    }
    if force.id == "dyfed-powys" {
        forms.push("Dyfed Powys".to_string());
    }
    if force.id == "hampshire" {
        forms.push("Hampshire".to_string());
    }
    if force.id == "metropolitan" {
        forms.push("MPS".to_string());
        forms.push("Metropolitan Police".to_string());
    }
    forms
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_forces_and_boroughs_by_their_area_names() {
        let g = Gazetteer::standard(&[]);
        let text = "live in Greater Manchester, three London boroughs (Croydon, Bromley and Sutton), Cleveland, North Wales, and with the British Transport Police.";
        let labels: Vec<String> = g.find(text).into_iter().map(|e| e.label).collect();
        assert_eq!(
            labels,
            vec![
                "Greater Manchester",
                "Croydon",
                "Bromley",
                "Sutton",
                "Cleveland",
                "North Wales",
                "British Transport Police"
            ]
        );
        let ids: Vec<String> = g
            .find("the London Boroughs of Croydon, Sutton, and Bromley, and Gwent")
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            ids,
            vec![
                "borough:croydon",
                "borough:sutton",
                "borough:bromley",
                "force:gwent"
            ]
        );
        assert!(g.find("across England and Wales").is_empty());
    }

    #[test]
    fn extra_vocabulary_is_found_too() {
        let g = Gazetteer::standard(&["Isles of Scilly".to_string()]);
        let found = g.find("piloted in the Isles of Scilly and Kent");
        assert_eq!(found[0].id, "extra:isles-of-scilly");
        assert_eq!(found[1].id, "force:kent");
    }
}
