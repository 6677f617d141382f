//! Whitespace collapsing, shared by the HTML parser (paragraph and cell text) and the content
//! hash (normalised text): text in, its pieces out with every whitespace run as one space and
//! the ends trimmed, in one pass that hands on text already in that form as it is. Also the
//! lower-casing that the diff module and the views' keyword search apply to such text.

/// Hands `sink` the text of `s` with each character mapped by `map`, every run of (mapped)
/// whitespace as one space, and none at either end, in pieces. A lone ASCII space between two
/// kept characters is already in that form, so ordinary prose goes to `sink` in one piece
/// rather than a piece a word. `map` is only asked about non-ASCII characters: ASCII is kept.
pub fn collapse_whitespace_into(s: &str, map: impl Fn(char) -> char, mut sink: impl FnMut(&str)) {
    // `run_start..i` is text not yet handed on: kept as it is.
    let mut started = false;
    let mut space_pending = false;
    let mut run_start = 0;
    let mut utf8 = [0u8; 4];
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if PLAIN[b as usize] {
            // The bulk of any text: printable ASCII, kept as it is, in a tight loop.
            if space_pending {
                sink(" ");
                space_pending = false;
            }
            started = true;
            i += 1;
            loop {
                // Eight bytes at a time while they are prose that stays as it is, then a byte at
                // a time up to the next byte that needs a look.
                while let Some(word) = bytes
                    .get(i..i + 8)
                    .and_then(|w| <[u8; 8]>::try_from(w).ok())
                {
                    if !kept_as_is(u64::from_le_bytes(word)) {
                        break;
                    }
                    i += 8;
                }
                let run_from = i;
                while i < bytes.len() && PLAIN[bytes[i] as usize] {
                    i += 1;
                }
                if i == run_from || i + 8 > bytes.len() {
                    break;
                }
            }
            continue;
        }
        if b.is_ascii() {
            // ASCII whitespace (the rest of ASCII is `PLAIN`).
            let lone_space = b == b' '
                && started
                && !space_pending
                && bytes.get(i + 1).is_some_and(|next| PLAIN[*next as usize]);
            if !lone_space {
                if run_start < i {
                    sink(&s[run_start..i]);
                }
                run_start = i + 1;
                space_pending = started;
            }
            i += 1;
            continue;
        }
        let Some(c) = s[i..].chars().next() else {
            break;
        };
        let width = c.len_utf8();
        let mapped = map(c);
        if mapped.is_whitespace() {
            if run_start < i {
                sink(&s[run_start..i]);
            }
            run_start = i + width;
            space_pending = started;
        } else {
            if space_pending {
                sink(" ");
                space_pending = false;
            }
            started = true;
            if mapped != c {
                if run_start < i {
                    sink(&s[run_start..i]);
                }
                sink(mapped.encode_utf8(&mut utf8));
                run_start = i + width;
            }
        }
        i += width;
    }
    if run_start < s.len() {
        sink(&s[run_start..]);
    }
}

/// Whether eight bytes (little-endian), following a byte of [`PLAIN`], are kept as they are:
/// printable ASCII and lone spaces, each space followed by a byte of printable ASCII in the
/// same eight, so that the word ends on one. Control characters and anything not ASCII are
/// left to the byte loop, which knows which of them are white.
fn kept_as_is(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of 0x80 or more (not ASCII), or under 0x20 (white or control).
    if word & HIGH != 0 || (word.wrapping_sub(ONES * 0x20) & !word & HIGH) != 0 {
        return false;
    }
    // Exactly the spaces: bytes that are zero once XORed with 0x20 (no byte here is over 0x7F,
    // so adding 0x7F to the low seven bits cannot carry into the next byte).
    let x = word ^ (ONES * 0x20);
    let spaces = !(((x & !HIGH) + !HIGH) | x) & HIGH;
    // No space next to another, and none last (the byte after the word is not known here).
    spaces & (spaces >> 8) == 0 && spaces >> 56 == 0
}

/// `s` with every whitespace run as one space, trimmed: `split_whitespace` joined with spaces.
pub fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    collapse_whitespace_into(s, |c| c, |piece| out.push_str(piece));
    out
}

/// `s` lower-cased, as `str::to_lowercase` does it; in place when it is ASCII (as nearly every
/// answer is), without a second string.
pub fn into_lowercase(mut s: String) -> String {
    if s.is_ascii() {
        s.make_ascii_lowercase();
        s
    } else {
        s.to_lowercase()
    }
}

/// ASCII bytes that are not whitespace: kept as they are, whatever surrounds them.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        // `char::is_whitespace` for ASCII (which, unlike `u8::is_ascii_whitespace`, has U+000B).
        table[b] = !matches!(b as u8, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ');
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_lowercase_is_to_lowercase() {
        for s in [
            "",
            "Gwent Police",
            "ÉCOLE",
            "İstanbul",
            "ΣΑΣ",
            "MIXED ascii Then Ünicode",
            "123 £",
        ] {
            assert_eq!(into_lowercase(s.to_string()), s.to_lowercase(), "{s:?}");
        }
    }

    fn reference(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    proptest::proptest! {
        /// Collapsing is `split_whitespace` joined with spaces, whatever the text.
        #[test]
        fn collapse_is_split_whitespace_joined(
            s in "([a-z,.é€]{1,5}( |  |\n|\t|\u{0b}|\u{a0}|\u{2003}| \u{2003}|\u{3000} )?){0,20} ?"
        ) {
            proptest::prop_assert_eq!(collapse_whitespace(&s), reference(&s));
        }

        /// ASCII prose long enough for the eight-byte path, with spaces alone, doubled and at
        /// word edges, white control characters and a character not ASCII here and there.
        #[test]
        fn collapse_of_ascii_prose_is_split_whitespace_joined(
            s in "([ -~]{0,24}( |  |\n|\t|\r\n|\u{0b}|\u{1f}|é|\u{a0})?){0,12}"
        ) {
            proptest::prop_assert_eq!(collapse_whitespace(&s), reference(&s));
        }

        #[test]
        fn collapse_of_any_string_is_split_whitespace_joined(s in proptest::prelude::any::<String>()) {
            proptest::prop_assert_eq!(collapse_whitespace(&s), reference(&s));
        }
    }
}
