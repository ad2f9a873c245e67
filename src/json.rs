//! JSON strings written straight into a buffer, for the hot path (records
//! and request bodies). Off the hot path, JSON is built as `serde_json`
//! values.

/// Appends `s` as a JSON string literal (quoted and escaped).
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is exact and already linked in.
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// `push_str` into a `String`.
pub fn push_string(out: &mut String, s: &str) {
    // SAFETY: `push_str` only appends a JSON string literal, which is UTF-8
    // (serde_json escapes nothing into invalid bytes), so `out` stays UTF-8.
    push_str(unsafe { out.as_mut_vec() }, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_and_escaped() {
        let mut s = String::from("x=");
        push_string(&mut s, "a\"b\\c\n\u{1}é🎉");
        assert_eq!(s, r#"x="a\"b\\c\n\u0001é🎉""#);
        let mut v = Vec::new();
        push_str(&mut v, "");
        assert_eq!(v, b"\"\"");
    }
}
