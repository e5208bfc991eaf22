//! Evaluating a rule against given inputs: the console's playground
//! (`POST /v1/admin/rules/test`) and `ferrobase rules test FILE` share this.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Decision, Request, Rule, RuleError, Scope, Vars};

/// One rule test: the rule (inline, or a collection's stored rule for an operation), the
/// inputs, and optionally what is expected.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleTest {
    /// A name for reports (rule-test files).
    pub name: Option<String>,
    /// The rule to evaluate; or give `collection` and `operation` to use a declared one.
    pub rule: Option<String>,
    pub collection: Option<String>,
    /// `list`, `get`, `create`, `update`, `delete` (documents); `read`, `write`, `delete`
    /// (buckets); `subscribe` (channels). With `rule`, `list` also checks the rule has an
    /// SQL form, as saving it would.
    pub operation: Option<String>,
    /// `document` (default), `bucket` or `channel`: which variables the rule may use.
    pub scope: Option<String>,
    /// `null` (or absent) for an anonymous caller, else `{id, role, …}`; missing fields
    /// take a signed-in user's defaults (`role: "user"`, no claims).
    #[schema(value_type = Option<Object>)]
    pub auth: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub doc: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub new: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub object: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub channel: Option<Value>,
    /// Overrides of `{time, method, ip}` (default: now, `GET`, `127.0.0.1`).
    #[schema(value_type = Option<Object>)]
    pub request: Option<Value>,
    /// `allow` or `deny`.
    pub expect: Option<String>,
}

/// Why a test could not be run (as opposed to a rule that denies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TestError {
    /// The input is malformed.
    #[error("{0}")]
    Input(String),
    /// The rule does not compile.
    #[error("{0}")]
    Rule(RuleError),
}

/// Finds a declared rule: `(collection, operation)` → its source, `None` when the collection
/// has no rule for the operation, or an error message (no such collection or operation).
pub type StoredRule<'a> = dyn Fn(&str, &str) -> Result<Option<String>, String> + 'a;

/// What a test found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    /// `Some(true)` when `expect` was given and met.
    pub passed: Option<bool>,
}

impl RuleTest {
    /// Evaluates the test. `stored` finds a declared rule by collection and operation.
    pub fn run(&self, stored: &StoredRule<'_>) -> Result<Outcome, TestError> {
        let scope = match self.scope.as_deref().unwrap_or("document") {
            "document" => Scope::Document,
            "bucket" => Scope::Bucket,
            "channel" => Scope::Channel,
            other => {
                return Err(TestError::Input(format!(
                    "unknown scope `{}` (document, bucket, channel)",
                    crate::query::shorten_for_message(other)
                )));
            }
        };
        let operation = self.operation.as_deref();
        let source = match (&self.rule, &self.collection, operation) {
            (Some(rule), None, _) => rule.clone(),
            (None, Some(collection), Some(op)) => stored(collection, op)
                .map_err(TestError::Input)?
                .ok_or_else(|| {
                    TestError::Input(format!(
                        "`{collection}` has no `{op}` rule, so only admins may do it"
                    ))
                })?,
            _ => {
                return Err(TestError::Input(
                    "give either `rule`, or `collection` and `operation`".into(),
                ));
            }
        };
        let rule = if scope == Scope::Document && operation == Some("list") {
            Rule::compile_list(&source)
        } else {
            Rule::compile(&source, scope)
        }
        .map_err(TestError::Rule)?;
        let decision = rule.evaluate(&self.vars()?);
        let passed = match self.expect.as_deref() {
            None => None,
            Some("allow") => Some(decision.allow),
            Some("deny") => Some(!decision.allow),
            Some(other) => {
                return Err(TestError::Input(format!(
                    "`expect` is `allow` or `deny`, not `{}`",
                    crate::query::shorten_for_message(other)
                )));
            }
        };
        Ok(Outcome { decision, passed })
    }

    fn vars(&self) -> Result<Vars, TestError> {
        let auth = match &self.auth {
            None | Some(Value::Null) => Value::Null,
            Some(Value::Object(given)) => {
                let mut auth: Map<String, Value> = json!({
                    "id": "", "role": "user", "anonymous": false, "email": null,
                    "email_verified": false, "claims": {},
                })
                .as_object()
                .cloned()
                .unwrap_or_default();
                for (k, v) in given {
                    if !auth.contains_key(k) {
                        return Err(TestError::Input(format!(
                            "auth has no field `{}` (id, role, anonymous, email, email_verified, claims)",
                            crate::query::shorten_for_message(k)
                        )));
                    }
                    auth.insert(k.clone(), v.clone());
                }
                Value::Object(auth)
            }
            Some(_) => return Err(TestError::Input("`auth` is null or an object".into())),
        };
        let mut request = Request {
            ip: Some("127.0.0.1".into()),
            ..Request::default()
        };
        match &self.request {
            None | Some(Value::Null) => {}
            Some(Value::Object(given)) => {
                for (k, v) in given {
                    match (k.as_str(), v) {
                        ("time", Value::String(t)) => {
                            request.time =
                                chrono::DateTime::parse_from_rfc3339(t).map_err(|_| {
                                    TestError::Input(
                                        "`request.time` is an RFC 3339 timestamp".into(),
                                    )
                                })?;
                        }
                        ("method", Value::String(m)) => request.method = m.clone(),
                        ("ip", Value::String(ip)) => request.ip = Some(ip.clone()),
                        ("ip", Value::Null) => request.ip = None,
                        ("time" | "method" | "ip", _) => {
                            return Err(TestError::Input(format!("`request.{k}` is a string")));
                        }
                        _ => {
                            return Err(TestError::Input(format!(
                                "request has no field `{}` (time, method, ip)",
                                crate::query::shorten_for_message(k)
                            )));
                        }
                    }
                }
            }
            Some(_) => return Err(TestError::Input("`request` is an object".into())),
        }
        Ok(Vars {
            auth,
            request,
            doc: self.doc.clone(),
            new: self.new.clone(),
            object: self.object.clone(),
            channel: self.channel.clone(),
        })
    }
}

/// A file of rule tests: `[[case]]` tables of [`RuleTest`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub case: Vec<RuleTest>,
}

/// Runs a rule-test file against the collections `config` declares, printing one line
/// per case; returns (passed, total).
pub fn run_test_file(
    config: &crate::config::Config,
    path: &std::path::Path,
) -> anyhow::Result<(usize, usize)> {
    use anyhow::Context as _;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: CaseFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if file.case.is_empty() {
        anyhow::bail!("{} has no [[case]] tables", path.display());
    }
    let stored = |collection: &str, op: &str| -> Result<Option<String>, String> {
        let decl = config
            .collections
            .get(collection)
            .ok_or_else(|| format!("the configuration declares no collection `{collection}`"))?;
        let op = crate::documents::access::Operation::parse(op)
            .ok_or_else(|| "`operation` is list, get, create, update or delete".to_owned())?;
        Ok(decl.rules.source(op).map(str::to_owned))
    };
    let mut passed = 0;
    for (index, case) in file.case.iter().enumerate() {
        let name = case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", index + 1));
        let line = match (&case.expect, case.run(&stored)) {
            (None, _) => "ERROR  needs `expect = \"allow\"` or `\"deny\"`".to_owned(),
            (_, Err(e)) => format!("ERROR  {e}"),
            (
                Some(_),
                Ok(Outcome {
                    passed: Some(true), ..
                }),
            ) => {
                passed += 1;
                "ok".to_owned()
            }
            (Some(expect), Ok(Outcome { decision, .. })) => format!(
                "FAIL   expected {expect}, got {} ({})",
                if decision.allow { "allow" } else { "deny" },
                decision.reason
            ),
        };
        println!("{name}: {line}");
    }
    Ok((passed, file.case.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str, _: &str) -> Result<Option<String>, String> {
        Err("no collections".into())
    }

    #[test]
    fn runs_inline_and_stored_rules() {
        let test = RuleTest {
            rule: Some("auth != null && doc._owner == auth.id".into()),
            auth: Some(json!({"id": "u1"})),
            doc: Some(json!({"_owner": "u1"})),
            expect: Some("allow".into()),
            ..RuleTest::default()
        };
        let out = test.run(&none).unwrap();
        assert!(out.decision.allow);
        assert_eq!(out.passed, Some(true));
        let anon = RuleTest {
            auth: None,
            ..test.clone()
        };
        assert_eq!(anon.run(&none).unwrap().passed, Some(false));
        let stored = RuleTest {
            rule: None,
            collection: Some("todos".into()),
            operation: Some("get".into()),
            ..test.clone()
        };
        let lookup = |c: &str, op: &str| -> Result<Option<String>, String> {
            assert_eq!((c, op), ("todos", "get"));
            Ok(Some("doc._owner == 'u2'".into()))
        };
        assert!(!stored.run(&lookup).unwrap().decision.allow);
    }

    #[test]
    fn refuses_bad_input() {
        let bad = |t: RuleTest| t.run(&none).unwrap_err();
        assert!(matches!(bad(RuleTest::default()), TestError::Input(_)));
        let rule = |r: &str| RuleTest {
            rule: Some(r.into()),
            ..RuleTest::default()
        };
        assert!(matches!(bad(rule("auth.id ==")), TestError::Rule(_)));
        assert!(matches!(
            bad(RuleTest {
                auth: Some(json!({"idd": 1})),
                ..rule("true")
            }),
            TestError::Input(_)
        ));
        assert!(matches!(
            bad(RuleTest {
                operation: Some("list".into()),
                ..rule("doc.title.matches('x')")
            }),
            TestError::Rule(_)
        ));
        assert!(matches!(
            bad(RuleTest {
                expect: Some("maybe".into()),
                ..rule("true")
            }),
            TestError::Input(_)
        ));
    }
}
