//! Object keys: parsed once, so a value of [`ObjectKey`] is always acceptable.

use std::fmt;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;

/// A valid object key: 1–1024 bytes of UTF-8, `/`-separated segments, none empty, `.` or
/// `..`; no leading `/`, no backslash, no control characters, no look-alike slashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

/// Characters that render like `/` and would make a key look like a path it is not.
const SLASH_LOOKALIKES: [char; 4] = ['\u{2215}', '\u{2044}', '\u{FF0F}', '\u{29F8}'];

impl ObjectKey {
    pub fn parse(key: &str) -> Result<ObjectKey, String> {
        check(key, false)?;
        Ok(ObjectKey(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment (a download's file name).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A list prefix: empty, or a key's beginning (may end with `/`).
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    check(prefix, true)
}

fn check(key: &str, prefix: bool) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(format!("a key is 1 to {MAX_KEY} bytes"));
    }
    if key.starts_with('/') {
        return Err("a key must not start with `/`".into());
    }
    if key.contains('\\') {
        return Err("a key must not contain `\\`".into());
    }
    if key.chars().any(char::is_control) {
        return Err("a key must not contain control characters".into());
    }
    if key.chars().any(|c| SLASH_LOOKALIKES.contains(&c)) {
        return Err("a key must not contain characters that look like `/`".into());
    }
    let segments: Vec<&str> = key.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if segment.is_empty() && !(prefix && last) {
            return Err("a key must not contain empty segments (`//`) or end with `/`".into());
        }
        if *segment == "." || *segment == ".." {
            return Err("a key must not contain `.` or `..` segments".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_refused() {
        let long = "a".repeat(4096);
        for key in [
            "",
            "../../x",
            "a/../../x",
            "/etc/passwd",
            "C:\\x",
            "\\\\srv\\share\\x",
            "a\0b",
            "a/./b",
            "..\u{2215}x",
            "a//b",
            "a/",
            "x\r\ny",
            long.as_str(),
            "..",
            ".",
        ] {
            assert!(ObjectKey::parse(key).is_err(), "{key:?} was accepted");
        }
        for key in [
            "a",
            "photos/2024/cat.png",
            "ünïcode/ключ",
            "..a",
            "a..",
            "a b",
        ] {
            assert!(ObjectKey::parse(key).is_ok(), "{key:?} was refused");
        }
        assert!(check_prefix("photos/").is_ok());
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("../").is_err());
    }
}
