//! Versions and aliases: which version answers a call. An alias splits traffic by weight
//! (`{"3": 90, "4": 10}`); a caller lands on the same version every time (a stable hash of
//! the caller's key picks the bucket), so a gray release does not flip users back and forth.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::engine::Manifest;
use super::pool::Code;

/// A loaded version: its code and the handlers it registers.
#[derive(Debug)]
pub struct Version {
    pub code: Arc<Code>,
    pub manifest: Manifest,
}

impl Version {
    pub fn new(code: Arc<Code>, manifest: Manifest) -> Self {
        Version { code, manifest }
    }
}

/// An alias's split, by version number, weights summing to more than 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights(Vec<(i64, u32)>);

impl Weights {
    /// Parses `{"3": 90, "4": 10}`.
    pub fn parse(text: &str) -> Result<Weights, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Weights::from_value(&v)
    }

    pub fn from_value(v: &Value) -> Result<Weights, String> {
        let Value::Object(map) = v else {
            return Err("weights are an object like {\"3\": 90, \"4\": 10}".into());
        };
        let mut out = Vec::new();
        for (k, w) in map {
            let version: i64 = k.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                format!(
                    "`{}` is not a version number",
                    crate::query::shorten_for_message(k)
                )
            })?;
            let weight = w.as_u64().filter(|w| *w <= 10_000).ok_or_else(|| {
                format!("the weight of version {version} must be a whole number 0-10000")
            })?;
            out.push((version, weight as u32));
        }
        out.sort();
        if out.iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
            return Err("at least one weight must be above 0".into());
        }
        if out.len() > 10 {
            return Err("an alias splits between at most 10 versions".into());
        }
        Ok(Weights(out))
    }

    /// Every version must exist.
    pub fn check(&self, known: &[i64]) -> Result<(), String> {
        match self.0.iter().find(|(v, _)| !known.contains(v)) {
            Some((v, _)) => Err(format!("there is no version {v}")),
            None => Ok(()),
        }
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(v, w)| (v.to_string(), Value::from(*w)))
                .collect(),
        )
    }

    pub fn versions(&self) -> impl Iterator<Item = i64> + '_ {
        self.0.iter().filter(|(_, w)| *w > 0).map(|(v, _)| *v)
    }

    /// The version a caller's key lands on.
    pub fn pick(&self, sticky: &str) -> Option<i64> {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut slot = fnv1a(sticky.as_bytes()) % total;
        for (v, w) in &self.0 {
            if slot < u64::from(*w) {
                return Some(*v);
            }
            slot -= u64::from(*w);
        }
        None
    }

    /// The version with the most weight (newest on ties): where cron runs.
    pub fn heaviest(&self) -> Option<i64> {
        self.0
            .iter()
            .filter(|(_, w)| *w > 0)
            .max_by_key(|(v, w)| (*w, *v))
            .map(|(v, _)| *v)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Mix the high bits down so small totals still spread evenly.
    h ^ (h >> 29)
}

/// Loaded versions and aliases.
#[derive(Debug, Default)]
pub struct Routes {
    pub versions: HashMap<i64, Arc<Version>>,
    pub aliases: HashMap<String, Weights>,
    /// `beforeCreate:todos` and friends that some version behind `live` registers.
    before: HashSet<String>,
    /// Whether some version behind `live` handles a change after it commits (an
    /// after-trigger or an auth event); when none does, the trigger pump skips the log.
    after: bool,
}

impl Routes {
    pub fn new(versions: HashMap<i64, Arc<Version>>, aliases: HashMap<String, Weights>) -> Self {
        let live: Vec<&Arc<Version>> = aliases
            .get("live")
            .map(|w| w.versions().filter_map(|v| versions.get(&v)).collect())
            .unwrap_or_default();
        let before = live
            .iter()
            .flat_map(|v| v.manifest.triggers.iter())
            .filter(|t| t.starts_with("before"))
            .cloned()
            .collect();
        let after = live.iter().any(|v| {
            !v.manifest.auth.is_empty()
                || v.manifest.triggers.iter().any(|t| !t.starts_with("before"))
        });
        Routes {
            versions,
            aliases,
            before,
            after,
        }
    }

    /// Whether a committed change may set off a handler (see `after`).
    pub fn has_after(&self) -> bool {
        self.after
    }

    pub fn route(&self, alias: &str, sticky: &str) -> Option<Arc<Version>> {
        let version = self.aliases.get(alias)?.pick(sticky)?;
        self.versions.get(&version).cloned()
    }

    pub fn has_before(&self, kind: &str, collection: &str) -> bool {
        if self.before.is_empty() {
            return false;
        }
        self.before.contains(&format!("{kind}:{collection}"))
    }
}

/// A callable function's name: 1-128 of letters, digits, `_`, `-`, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub fn check_alias_name(name: &str) -> Result<(), String> {
    if valid_name(name) && name.len() <= 64 {
        Ok(())
    } else {
        Err("alias names are 1-64 letters, digits, `_` or `-`, starting with a letter".into())
    }
}

/// Parses a cron expression: 5 fields, or 6 with leading seconds.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!(
            "`{}` has {fields} fields; cron expressions have 5, or 6 with leading seconds",
            crate::query::shorten_for_message(expr)
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("`{}`: {e}", crate::query::shorten_for_message(expr)))
}

/// Checks what a version registers (cron expressions, names).
pub fn check_manifest(m: &Manifest) -> Result<(), String> {
    for (name, expr) in &m.crons {
        if !valid_name(name) {
            return Err(format!(
                "cron `{}`: names are letters, digits, `_` or `-`",
                crate::query::shorten_for_message(name)
            ));
        }
        parse_cron(expr).map_err(|e| format!("cron `{name}`: {e}"))?;
    }
    for t in &m.triggers {
        let Some((_, target)) = t.split_once(':') else {
            return Err(format!("BUG: trigger key `{t}`"));
        };
        if target.is_empty() || target.len() > 128 {
            return Err(format!("trigger `{t}`: name a collection or bucket"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_split_traffic_in_proportion_and_stick() {
        let w = Weights::parse(r#"{"3": 90, "4": 10}"#).unwrap();
        let mut counts = HashMap::new();
        for i in 0..10_000 {
            *counts
                .entry(w.pick(&format!("u:{i}")).unwrap())
                .or_insert(0) += 1;
        }
        let four = counts[&4];
        assert!((800..1200).contains(&four), "version 4 got {four} of 10000");
        assert_eq!(w.pick("u:42"), w.pick("u:42"));
    }

    #[test]
    fn weights_reject_bad_input() {
        assert!(Weights::parse(r#"{"x": 1}"#).is_err());
        assert!(Weights::parse(r#"{"1": 0}"#).is_err());
        assert!(Weights::parse(r#"{"1": -1}"#).is_err());
        assert!(Weights::parse(r#"[1]"#).is_err());
    }

    #[test]
    fn cron_takes_five_or_six_fields() {
        assert!(parse_cron("0 3 * * *").is_ok());
        assert!(parse_cron("*/5 * * * * *").is_ok());
        assert!(parse_cron("* * * *").is_err());
        assert!(parse_cron("0 0 3 * * * 2030").is_err());
        assert!(parse_cron("61 * * * *").is_err());
    }

    #[test]
    fn names_refuse_prototype_tricks() {
        assert!(valid_name("addTodo"));
        for bad in ["", "__proto__", "a.b", "%2e%2e", "..", "9x"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
