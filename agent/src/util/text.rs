//! Text from outside (VM names, cgroup paths, device models, the node name) made safe
//! to show people. A terminal obeys escape sequences and newlines; bidi overrides
//! (U+202E) make a name read backwards; zero-width and other invisible characters make
//! two different names look alike. Each such character is written out as `\u{…}`, so
//! it is visible and two distinct names stay distinct; everything else is kept.

/// Longest label value or node name, in characters.
pub const MAX_LABEL_CHARS: usize = 128;

/// Characters that control a terminal or change how text around them reads, or that
/// show nothing at all.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Bidi marks, embeddings, overrides and isolates.
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
            // Line and paragraph separators break lines like a newline.
            | '\u{2028}' | '\u{2029}'
            // Invisible: soft hyphen, zero-width space/joiners, word joiner and invisible
            // operators, BOM, Mongolian vowel separator, Hangul fillers, interlinear
            // annotation marks, tag characters.
            | '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}'
            | '\u{FEFF}' | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}'
        )
}

/// `s` with every [`is_unsafe`] character written as `\u{hex}`. Borrows when there is
/// nothing to escape (the common case, on the per-series path).
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    std::borrow::Cow::Owned(out)
}

/// [`escape`], cut to at most [`MAX_LABEL_CHARS`] characters (never inside an escape).
pub fn bounded(s: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    for c in s.chars() {
        let mut piece = String::new();
        push_escaped(&mut piece, c);
        let n = piece.chars().count();
        if count + n > MAX_LABEL_CHARS {
            break;
        }
        count += n;
        out.push_str(&piece);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    if is_unsafe(c) {
        out.push_str(&format!("\\u{{{:x}}}", c as u32));
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls_bidi_and_invisible_characters() {
        assert_eq!(
            escape("evil\n\x1b[31mFAKE ALARM\x1b[0m"),
            "evil\\u{a}\\u{1b}[31mFAKE ALARM\\u{1b}[0m"
        );
        assert_eq!(escape("vm-\u{202E}gpj.exe"), "vm-\\u{202e}gpj.exe");
        assert_eq!(
            escape("a\u{200B}b\u{FEFF}c\u{2066}"),
            "a\\u{200b}b\\u{feff}c\\u{2066}"
        );
        assert_eq!(escape("x\u{9b}y\u{7f}"), "x\\u{9b}y\\u{7f}");
        assert_eq!(escape("tag\u{E0041}"), "tag\\u{e0041}");
    }

    #[test]
    fn ordinary_names_are_kept_as_they_are() {
        for name in [
            "web-01",
            "Ceph OSD 12",
            "vm_ü_東京",
            "kubepods.slice/pod-1",
            "a b",
        ] {
            assert!(
                matches!(escape(name), std::borrow::Cow::Borrowed(_)),
                "{name}"
            );
        }
    }

    #[test]
    fn bounded_cuts_at_the_limit_but_never_inside_an_escape() {
        assert_eq!(bounded(&"x".repeat(500)).chars().count(), MAX_LABEL_CHARS);
        let s = format!("{}\u{202E}", "y".repeat(MAX_LABEL_CHARS - 3));
        // The 8-character escape does not fit in the 3 left: dropped whole.
        assert_eq!(bounded(&s), "y".repeat(MAX_LABEL_CHARS - 3));
        assert_eq!(bounded("a\u{1b}b"), "a\\u{1b}b");
    }
}
