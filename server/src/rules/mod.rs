//! Access rules: CEL expressions (the `cel` crate parses and evaluates them), checked when
//! saved, evaluated per document, and — for `list` rules — lowered to a query filter that the
//! store compiles to SQL.
//!
//! One engine for every area: documents (`auth`, `doc`, `new`, `request`), buckets (`auth`,
//! `object`, `request`) and realtime channels (`auth`, `channel`, `request`). A rule that
//! fails to evaluate (a missing field, a type error) denies: fail closed.

mod bind;
mod check;
pub mod fast;
mod lower;
pub mod playground;
pub mod value;

use std::sync::{Arc, LazyLock};

use cel::{Context, Env, Program};
use serde_json::{Map, Value, json};

use crate::auth::{Caller, Principal};
use crate::query::{Fields, Filter, SystemField};

pub use lower::Plan;
pub use playground::run_test_file;

/// Which variables a rule may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `auth`, `doc`, `new`, `request`.
    Document,
    /// `auth`, `object`, `request`.
    Bucket,
    /// `auth`, `channel`, `request`.
    Channel,
}

impl Scope {
    pub fn variables(self) -> &'static [&'static str] {
        match self {
            Scope::Document => &["auth", "doc", "new", "request"],
            Scope::Bucket => &["auth", "object", "request"],
            Scope::Channel => &["auth", "channel", "request"],
        }
    }
}

/// Why a rule was refused when saved; `position` is a character offset in the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    pub message: String,
    pub position: Option<u32>,
}

impl RuleError {
    pub(crate) fn at(message: impl Into<String>, position: Option<u32>) -> Self {
        let message = message.into();
        let message = match position {
            Some(p) => format!("{message} (at character {})", p + 1),
            None => message,
        };
        Self { message, position }
    }
}

/// The outcome of evaluating a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reason: String,
}

/// The first parse error, with its position as a character offset.
fn syntax_error(source: &str, errors: &cel::ParseErrors) -> RuleError {
    let Some(first) = errors.errors.first() else {
        return RuleError::at("syntax error", None);
    };
    let (line, column) = first.pos;
    let position = usize::try_from(line)
        .ok()
        .filter(|l| *l >= 1)
        .and_then(|line| {
            let before: usize = source
                .split('\n')
                .take(line - 1)
                .map(|l| l.chars().count() + 1)
                .sum();
            // Columns are 1-based.
            let column = usize::try_from(column).ok()?.saturating_sub(1);
            u32::try_from(before + column).ok()
        });
    let message = first
        .msg
        .strip_prefix("Syntax error: ")
        .unwrap_or(&first.msg);
    RuleError::at(format!("syntax error: {message}"), position)
}

/// The standard CEL environment, built once.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    source: Arc<str>,
    program: Arc<Program>,
    /// For `list` rules: how the rule becomes a filter.
    plan: Option<Arc<Plan>>,
    /// What of each variable the rule reads (only that is converted to CEL).
    uses: Arc<bind::Uses>,
    /// The verdict of a rule that reads no variable (`true`), decided once when compiled.
    constant: Option<bool>,
    /// The rule's native form, when it has the common shape `fast` covers.
    fast: Option<Arc<fast::Node>>,
}

/// Longest accepted rule source.
const MAX_RULE_LEN: usize = 4096;

impl Rule {
    /// Parses and checks a rule (unknown variables and functions, obvious type errors, a
    /// non-boolean result).
    pub fn compile(source: &str, scope: Scope) -> Result<Rule, RuleError> {
        if source.len() > MAX_RULE_LEN {
            return Err(RuleError::at(
                format!("rules are limited to {MAX_RULE_LEN} characters"),
                None,
            ));
        }
        let program = Program::compile(source).map_err(|e| syntax_error(source, &e))?;
        check::check(&program, scope)?;
        let uses = bind::uses(program.expression());
        let fast = fast::compile(program.expression()).map(Arc::new);
        let mut rule = Rule {
            source: source.into(),
            program: Arc::new(program),
            plan: None,
            uses: Arc::new(uses),
            constant: None,
            fast,
        };
        if rule.uses.none() {
            rule.constant = Some(rule.evaluate(&Vars::default()).allow);
        }
        Ok(rule)
    }

    /// Compiles a `list` rule: it must also have an SQL form (see `lower`).
    pub fn compile_list(source: &str) -> Result<Rule, RuleError> {
        let mut rule = Rule::compile(source, Scope::Document)?;
        let plan = lower::plan(rule.program.expression(), rule.program.source_info())?;
        rule.plan = Some(Arc::new(plan));
        Ok(rule)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The verdict of a rule that reads no variable (`true`, `false`), known without
    /// evaluating.
    pub fn constant(&self) -> Option<bool> {
        self.constant
    }

    /// Whether the rule allows, building the variables only when the verdict depends on
    /// them (a constant rule costs nothing per check).
    pub fn allows(&self, vars: impl FnOnce() -> Vars) -> bool {
        match self.constant {
            Some(allow) => allow,
            None => self.evaluate(&vars()).allow,
        }
    }

    /// Whether the rule allows `auth` this, on `doc` and `new`: natively when the rule has
    /// the common shape (see `fast`), else through CEL with the variables `vars` builds.
    pub fn allows_on(
        &self,
        auth: &Principal,
        doc: fast::Doc<'_>,
        new: fast::Doc<'_>,
        vars: impl FnOnce() -> Vars,
    ) -> bool {
        if let Some(allow) = self.constant {
            return allow;
        }
        if let Some(node) = &self.fast
            && let Some(allow) = fast::allows(node, &fast::Input { auth, doc, new })
        {
            return allow;
        }
        self.evaluate(&vars()).allow
    }

    /// Evaluates the rule with the given variables (JSON; absent ones are not bound).
    pub fn evaluate(&self, vars: &Vars) -> Decision {
        match self.constant {
            Some(true) => {
                return Decision {
                    allow: true,
                    reason: "the rule evaluated to true".into(),
                };
            }
            Some(false) => {
                return Decision {
                    allow: false,
                    reason: "the rule evaluated to false".into(),
                };
            }
            None => {}
        }
        let context = vars.context(&self.uses);
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(true)) => Decision {
                allow: true,
                reason: "the rule evaluated to true".into(),
            },
            Ok(cel::Value::Bool(false)) => Decision {
                allow: false,
                reason: "the rule evaluated to false".into(),
            },
            Ok(other) => Decision {
                allow: false,
                reason: format!("the rule evaluated to {other:?}, not a boolean"),
            },
            Err(e) => Decision {
                allow: false,
                reason: format!("the rule failed, which denies: {e}"),
            },
        }
    }

    /// `doc` for this rule, from a document: the fields it reads.
    pub fn doc_value(&self, doc: &impl Fields) -> Value {
        document_value(doc, &self.uses.doc)
    }

    /// `new` for this rule, from a document: the fields it reads.
    pub fn new_value(&self, doc: &impl Fields) -> Value {
        document_value(doc, &self.uses.new)
    }

    /// The filter a `list` rule stands for, for one request (`auth`, `request` known).
    pub fn filter(&self, vars: &Vars) -> Filter {
        match &self.plan {
            Some(plan) => plan.filter(&vars.context(&self.uses)),
            None => Filter::False,
        }
    }
}

/// The variables of one evaluation. `doc`, `new`, `object` and `channel` are JSON; absent
/// ones are not bound.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    /// `null` for anonymous callers.
    pub auth: Value,
    pub request: Request,
    pub doc: Option<Value>,
    pub new: Option<Value>,
    pub object: Option<Value>,
    pub channel: Option<Value>,
}

/// `request` as rules see it: `{time, method, ip}`.
#[derive(Debug, Clone)]
pub struct Request {
    pub time: chrono::DateTime<chrono::FixedOffset>,
    pub method: String,
    pub ip: Option<String>,
}

impl Default for Request {
    /// Now, `GET`, no address.
    fn default() -> Self {
        Request {
            time: chrono::Utc::now().fixed_offset(),
            method: "GET".into(),
            ip: None,
        }
    }
}

impl Request {
    fn to_cel(&self) -> cel::Value {
        let key = |k: &str| cel::objects::Key::String(Arc::new(k.to_owned()));
        let ip = match &self.ip {
            Some(ip) => cel::Value::String(Arc::new(ip.clone())),
            None => cel::Value::Null,
        };
        let entries = std::collections::HashMap::from([
            (key("time"), cel::Value::Timestamp(self.time)),
            (
                key("method"),
                cel::Value::String(Arc::new(self.method.clone())),
            ),
            (key("ip"), ip),
        ]);
        cel::Value::Map(cel::objects::Map {
            map: Arc::new(entries),
        })
    }
}

impl Vars {
    /// `auth` and `request` for a caller.
    pub fn for_caller(caller: &Caller) -> Vars {
        Vars {
            auth: auth_value(&caller.principal),
            request: Request {
                time: chrono::Utc::now().fixed_offset(),
                method: caller.method.to_owned(),
                ip: caller.ip.map(|i| i.to_string()),
            },
            ..Vars::default()
        }
    }

    fn context(&self, uses: &bind::Uses) -> Context<'static, 'static> {
        let mut context = Context::with_env(ENV.clone());
        context.add_variable_from_value("auth", value::to_cel(&self.auth));
        if uses.request {
            context.add_variable_from_value("request", self.request.to_cel());
        }
        for (name, v, used) in [
            ("doc", &self.doc, &uses.doc),
            ("new", &self.new, &uses.new),
            ("object", &self.object, &uses.object),
            ("channel", &self.channel, &uses.channel),
        ] {
            if let Some(v) = v
                && let Some(cel) = bind_value(v, used)
            {
                context.add_variable_from_value(name, cel);
            }
        }
        context
    }
}

/// A variable as a rule uses it: not at all, some top-level fields, or whole.
fn bind_value(v: &Value, used: &bind::Use) -> Option<cel::Value> {
    match (used, v) {
        (bind::Use::Unused, _) => None,
        (bind::Use::Fields(fields), Value::Object(map)) => {
            let entries: std::collections::HashMap<cel::objects::Key, cel::Value> = fields
                .iter()
                .filter_map(|f| {
                    let value = map.get(f)?;
                    Some((
                        cel::objects::Key::String(Arc::new(f.clone())),
                        value::to_cel(value),
                    ))
                })
                .collect();
            Some(cel::Value::Map(cel::objects::Map {
                map: Arc::new(entries),
            }))
        }
        _ => Some(value::to_cel(v)),
    }
}

/// A document as JSON for `doc`/`new`, with only the fields `used` names (all of them when
/// the rule uses the document whole): copying a large document for `doc._owner` would cost
/// more than the rule.
fn document_value(doc: &impl Fields, used: &bind::Use) -> Value {
    let mut out = Map::new();
    match used {
        bind::Use::Unused => {}
        bind::Use::Fields(fields) => {
            for f in fields {
                match SystemField::from_name(f) {
                    Some(sys) => {
                        out.insert(f.clone(), doc.system(sys));
                    }
                    None => {
                        if let Some(v) = doc.data().get(f) {
                            out.insert(f.clone(), v.clone());
                        }
                    }
                }
            }
        }
        bind::Use::Whole => {
            for sys in SystemField::ALL {
                out.insert(sys.name().to_owned(), doc.system(sys));
            }
            out.extend(doc.data().iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    Value::Object(out)
}

/// `auth` as rules see it: `null`, or `{id, role, anonymous, email, email_verified, claims}`.
pub fn auth_value(principal: &Principal) -> Value {
    match principal {
        Principal::User(u) => json!({
            "id": u.id,
            "role": u.role,
            "anonymous": u.anonymous,
            "email": u.email,
            "email_verified": u.email_verified,
            "claims": Value::Object(u.claims.clone()),
        }),
        Principal::Admin { id, .. } => json!({
            "id": id, "role": "admin", "anonymous": false, "email": null,
            "email_verified": false, "claims": Map::new(),
        }),
        Principal::Service => json!({
            "id": "service", "role": "service", "anonymous": false, "email": null,
            "email_verified": false, "claims": Map::new(),
        }),
        Principal::Anonymous => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(auth: Value, doc: Option<Value>, new: Option<Value>) -> Vars {
        Vars {
            auth,
            request: Request {
                time: chrono::DateTime::parse_from_rfc3339("2026-11-21T00:00:00Z").unwrap(),
                method: "GET".into(),
                ip: Some("127.0.0.1".into()),
            },
            doc,
            new,
            ..Vars::default()
        }
    }

    #[test]
    fn evaluates_owner_and_field_rules() {
        let owner =
            Rule::compile("auth != null && doc._owner == auth.id", Scope::Document).unwrap();
        let me = json!({"id": "u1", "role": "user"});
        assert!(
            owner
                .evaluate(&vars(me.clone(), Some(json!({"_owner": "u1"})), None))
                .allow
        );
        assert!(
            !owner
                .evaluate(&vars(me.clone(), Some(json!({"_owner": "u2"})), None))
                .allow
        );
        assert!(
            !owner
                .evaluate(&vars(Value::Null, Some(json!({"_owner": "u1"})), None))
                .allow
        );
        let size = Rule::compile(
            "new.title.size() <= 5 && new.count + 1 > 1",
            Scope::Document,
        )
        .unwrap();
        assert!(
            size.evaluate(&vars(
                me.clone(),
                None,
                Some(json!({"title": "abc", "count": 1}))
            ))
            .allow
        );
        assert!(
            !size
                .evaluate(&vars(
                    me.clone(),
                    None,
                    Some(json!({"title": "abcdef", "count": 1}))
                ))
                .allow
        );
        let failing = Rule::compile("doc.missing == 1", Scope::Document).unwrap();
        let d = failing.evaluate(&vars(me.clone(), Some(json!({})), None));
        assert!(!d.allow && d.reason.contains("failed"), "{d:?}");
        let time = Rule::compile(
            "request.time > timestamp('2020-01-01T00:00:00Z')",
            Scope::Document,
        )
        .unwrap();
        assert!(time.evaluate(&vars(me, None, None)).allow);
    }

    /// The examples of docs/rules.md.
    #[test]
    fn the_documented_examples_work() {
        let me = json!({"id": "u1", "role": "editor", "anonymous": false, "email": "a@b.c",
                        "email_verified": true, "claims": {"team": "red"}});
        let doc = json!({"_owner": "u1", "_created_at": "2026-11-20T23:30:00.000Z", "public": false,
                         "team": "red", "slug": "s", "members": ["u1", "u2"], "name": "x.png"});
        let new = json!({"title": "t", "tags": ["a", "b"], "slug": "s", "balance": 0});
        for rule in [
            "auth != null && doc._owner == auth.id",
            "doc.public == true || (auth != null && auth.role == \"editor\")",
            "auth != null && auth.claims.team == doc.team",
            "new.title.size() <= 200 && new.tags.all(t, t.size() < 20)",
            "new.slug == doc.slug",
            "doc._owner == auth.id && new.balance >= 0",
            "auth != null && !auth.anonymous && auth.email_verified",
            "request.time - timestamp(doc._created_at) < duration(\"1h\")",
            "auth != null && auth.id in doc.members",
            "doc.name.endsWith('.png') && doc.name.matches('^[a-z]+[.]png$')",
            "new.tags.exists_one(t, t == 'a') && new.tags.map(t, t + '!').size() == 2",
            "new.tags.filter(t, t != 'a') == ['b'] && int('3') == 3 && string(1) == '1'",
        ] {
            let compiled =
                Rule::compile(rule, Scope::Document).unwrap_or_else(|e| panic!("{rule}: {e}"));
            let d = compiled.evaluate(&vars(me.clone(), Some(doc.clone()), Some(new.clone())));
            assert!(d.allow, "{rule}: {}", d.reason);
        }
    }

    #[test]
    fn refuses_bad_rules_with_a_position() {
        for (rule, needle) in [
            ("auth.id ==", "syntax"),
            ("user.id == doc._owner", "unknown variable `user`"),
            ("auth.idd == 'x'", "auth has no field `idd`"),
            ("request.tme != null", "request has no field `tme`"),
            ("doc.a == 1 && 'x'", "boolean"),
            ("auth.id > 5", "cannot compare"),
            ("frobnicate(doc.a)", "unknown function `frobnicate`"),
            ("doc.a + 1", "boolean"),
            ("object.size > 0", "unknown variable `object`"),
            (&"a".repeat(5000), "limited"),
        ] {
            let err = Rule::compile(rule, Scope::Document).unwrap_err();
            assert!(err.message.contains(needle), "{rule}: {}", err.message);
        }
        let err = Rule::compile("auth.idd == 'x'", Scope::Document).unwrap_err();
        assert!(err.position.is_some());
        let err = Rule::compile("true &&\n  doc.x ==", Scope::Document).unwrap_err();
        assert_eq!(err.position, Some(18), "{}", err.message);
        assert!(err.message.starts_with("syntax error: "), "{}", err.message);
        assert!(Rule::compile("doc.tags.exists(t, t == auth.id)", Scope::Document).is_ok());
        assert!(
            Rule::compile(
                "request.time - timestamp(doc._created_at) < duration('1h')",
                Scope::Document
            )
            .is_ok()
        );
        assert!(Rule::compile("object.size < 1000", Scope::Bucket).is_ok());
    }
}
