//! The JavaScript engine: QuickJS through `rquickjs`. The only module that names the engine,
//! so another could replace it behind the same small surface ([`Isolate`], [`Bridge`]).
//!
//! An isolate is one QuickJS runtime with one context that has loaded one version's
//! modules. It lives on one worker thread (QuickJS is single-threaded) and is reused across
//! invocations ("warm"). Reuse is safe because, once the modules have loaded, every
//! intrinsic and `globalThis` is frozen (`lockdown.js`): an invocation cannot change what
//! the next one sees. A fresh context per invocation would cost ~77 µs (measured), a warm
//! call ~1.3 µs; see BENCHMARKS.md.
//!
//! Limits: a memory limit and a stack limit per runtime; a deadline checked by QuickJS's
//! interrupt handler and by the job-queue loop. After a timeout, an out-of-memory error or
//! a stack overflow the isolate is dropped ([`Isolate::poisoned`]) and the next invocation
//! builds a new one.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::{
    CatchResultExt, CaughtError, Context, Ctx, Function, Module, Object, Persistent, Promise,
    Runtime, Value, module::Declared, object::Property,
};

const PRELUDE: &str = include_str!("prelude.js");
const LOCKDOWN: &str = include_str!("lockdown.js");

/// Largest JSON text a bridge call may carry either way.
pub const MAX_BRIDGE_TEXT: usize = 8 << 20;

/// A log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// A host failure a bridge call reports to JS (it becomes a `FunctionError`).
#[derive(Debug, Clone)]
pub struct HostError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// What user code may ask of the server during one invocation.
pub trait Bridge {
    /// Runs a host operation (`db.get`, `storage.read`, `fetch`, …) with JSON arguments.
    fn op(&mut self, name: &str, args: &str) -> Result<serde_json::Value, HostError>;
    /// Captures a log line.
    fn log(&mut self, level: Level, message: String);
}

/// The handlers a version registers.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct Manifest {
    pub calls: Vec<String>,
    /// `beforeCreate:todos`, `afterUpload:avatars`, …
    pub triggers: Vec<String>,
    /// `[name, expression]`.
    pub crons: Vec<(String, String)>,
    /// `signup`, `login`, `delete`.
    pub auth: Vec<String>,
}

/// What one invocation came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler's result (JSON).
    Ok(serde_json::Value),
    /// No handler is registered under that name in this version.
    Missing,
    /// `fb.error(status, message)` or a failed host operation the handler did not catch.
    Rejected { status: u16, message: String },
    /// Any other exception; `detail` (with the stack) goes to the logs, not to the client.
    Failed { detail: String },
    /// The deadline passed.
    Timeout,
}

/// A version's source files, by path relative to the functions folder.
pub type Files = BTreeMap<String, String>;

/// Per-isolate limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory: usize,
    pub stack: usize,
}

type SharedBridge = Rc<RefCell<Option<Box<dyn Bridge>>>>;

/// Promises rejected with no handler yet; QuickJS reports a rejection before an `await`
/// attaches to it, so only those still unhandled when an invocation ends are logged.
type Unhandled = Rc<RefCell<Vec<(Persistent<Value<'static>>, String)>>>;

/// One runtime + context with a version's modules loaded and intrinsics frozen.
pub struct Isolate {
    // Field order matters: the context must drop before the runtime.
    host: Option<Persistent<Object<'static>>>,
    context: Context,
    runtime: Runtime,
    deadline: Rc<Cell<Option<Instant>>>,
    bridge: SharedBridge,
    unhandled: Unhandled,
    poisoned: bool,
    /// The limits it was built with; a handler's own limits apply only while it runs.
    limits: Limits,
}

impl Drop for Isolate {
    fn drop(&mut self) {
        // Persistent values must be released before their runtime.
        self.host.take();
        self.unhandled.borrow_mut().clear();
    }
}

/// Why a version could not load.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

impl Isolate {
    /// Builds an isolate and loads every top-level module of `files`; `deadline` bounds the
    /// module evaluation (top-level code). Returns the handlers the version registered.
    pub fn load(
        files: &Files,
        limits: Limits,
        fetch: bool,
        deadline: Instant,
    ) -> Result<(Isolate, Manifest), LoadError> {
        let runtime = Runtime::new().map_err(|e| LoadError(format!("engine: {e}")))?;
        runtime.set_memory_limit(limits.memory);
        runtime.set_max_stack_size(limits.stack);
        let deadline_cell: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(Some(deadline)));
        let interrupt = deadline_cell.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || {
            interrupt.get().is_some_and(|d| Instant::now() >= d)
        })));
        let bridge: SharedBridge = Rc::new(RefCell::new(None));
        let unhandled: Unhandled = Rc::new(RefCell::new(Vec::new()));
        let tracked = unhandled.clone();
        runtime.set_host_promise_rejection_tracker(Some(Box::new(
            move |ctx, promise, reason, handled| {
                let mut list = tracked.borrow_mut();
                if handled {
                    list.retain(|(p, _)| {
                        p.clone()
                            .restore(&ctx)
                            .map(|p| p != promise)
                            .unwrap_or(false)
                    });
                } else if list.len() < 100 {
                    list.push((Persistent::save(&ctx, promise), describe_value(&reason)));
                }
            },
        )));
        runtime.set_loader(
            BundleResolver {
                files: files.clone(),
            },
            BundleLoader {
                files: files.clone(),
            },
        );
        let context = Context::full(&runtime).map_err(|e| LoadError(format!("engine: {e}")))?;
        let mut isolate = Isolate {
            host: None,
            context,
            runtime,
            deadline: deadline_cell,
            bridge,
            unhandled,
            poisoned: false,
            limits,
        };
        let manifest = isolate.init(files, fetch)?;
        isolate.deadline.set(None);
        Ok((isolate, manifest))
    }

    fn init(&mut self, files: &Files, fetch: bool) -> Result<Manifest, LoadError> {
        let bridge = self.bridge.clone();
        let entries: Vec<&String> = files.keys().filter(|p| is_entry(p)).collect();
        let deadline = self.deadline.clone();
        let result = self.context.with(
            |ctx| -> Result<(Persistent<Object<'static>>, Manifest), String> {
                let globals = ctx.globals();
                // Globals a plain QuickJS context has that functions must not see.
                for name in ["print", "scriptArgs", "std", "os", "gc"] {
                    let _ = globals.remove(name);
                }
                let host = Object::new(ctx.clone()).map_err(|e| e.to_string())?;
                let op_bridge = bridge.clone();
                let op = op_function(&ctx, op_bridge).map_err(|e| e.to_string())?;
                let log_bridge = bridge.clone();
                let log =
                    Function::new(ctx.clone(), move |level: Value<'_>, message: Value<'_>| {
                        let level = match level
                            .as_string()
                            .and_then(|s| s.to_string().ok())
                            .as_deref()
                        {
                            Some("debug") => Level::Debug,
                            Some("warn") => Level::Warn,
                            Some("error") => Level::Error,
                            _ => Level::Info,
                        };
                        let text = message
                            .as_string()
                            .and_then(|s| s.to_string().ok())
                            .unwrap_or_default();
                        if let Some(b) = log_bridge.borrow_mut().as_mut() {
                            b.log(level, text);
                        }
                    })
                    .map_err(|e| e.to_string())?;
                host.set("op", op).map_err(|e| e.to_string())?;
                host.set("log", log).map_err(|e| e.to_string())?;
                host.set(
                    "bytes",
                    base64_function(&ctx, false).map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                host.set(
                    "utf8",
                    base64_function(&ctx, true).map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                host.set("fetch", fetch).map_err(|e| e.to_string())?;
                globals
                    .set("__fb_host", host.clone())
                    .map_err(|e| e.to_string())?;
                for entry in entries {
                    let promise = Module::import(&ctx, entry.as_str())
                        .catch(&ctx)
                        .map_err(|e| caught_text(e, entry))?;
                    settle::<()>(&ctx, &promise, &deadline).map_err(|e| match e {
                        Settle::Timeout => format!("{entry}: top-level code ran past the deadline"),
                        Settle::Stuck => format!("{entry}: top-level await never settled"),
                        Settle::Thrown(t) => format!("{entry}: {t}"),
                    })?;
                }
                // A bundle without the host module imported still gets `console` and the
                // dispatcher: load it explicitly (a no-op when a module already imported it).
                let promise = Module::import(&ctx, "ferrobase")
                    .catch(&ctx)
                    .map_err(|e| caught_text(e, "ferrobase"))?;
                settle::<()>(&ctx, &promise, &deadline)
                    .map_err(|_| "loading the host module failed".to_string())?;
                let seal: Function = host.get("seal").map_err(|e| e.to_string())?;
                seal.call::<_, ()>(()).map_err(|e| e.to_string())?;
                ctx.eval::<(), _>(LOCKDOWN)
                    .catch(&ctx)
                    .map_err(|e| caught_text(e, "lockdown"))?;
                let manifest: Function = host.get("manifest").map_err(|e| e.to_string())?;
                let text: String = manifest.call(()).map_err(|e| e.to_string())?;
                let manifest: Manifest =
                    serde_json::from_str(&text).map_err(|e| format!("BUG: manifest: {e}"))?;
                Ok((Persistent::save(&ctx, host), manifest))
            },
        );
        match result {
            Ok((host, manifest)) => {
                self.host = Some(host);
                Ok(manifest)
            }
            Err(message) => Err(LoadError(message)),
        }
    }

    /// True after a fault that may have left the runtime in a bad state; drop it.
    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Bytes the runtime holds.
    pub fn memory_used(&self) -> i64 {
        self.runtime.memory_usage().memory_used_size
    }

    /// Runs one handler: `kind` is `call`, `trigger`, `cron` or `auth`; `payload` and
    /// `meta` reach `prelude.js` as the objects `JSON.parse` would make of them.
    #[expect(
        clippy::too_many_arguments,
        reason = "the pool's one call site passes a task's fields through"
    )]
    pub fn invoke(
        &mut self,
        kind: &str,
        key: &str,
        payload: &serde_json::Value,
        meta: &serde_json::Value,
        bridge: Box<dyn Bridge>,
        deadline: Instant,
        limits: Option<Limits>,
    ) -> Outcome {
        let Some(host) = self.host.clone() else {
            return Outcome::Failed {
                detail: "BUG: isolate without host".into(),
            };
        };
        if let Some(own) = limits {
            self.runtime.set_memory_limit(own.memory);
            self.runtime.set_max_stack_size(own.stack);
        }
        // A result may take as much room outside the engine as it could inside.
        let budget = limits.unwrap_or(self.limits).memory;
        *self.bridge.borrow_mut() = Some(bridge);
        self.deadline.set(Some(deadline));
        let deadline_cell = self.deadline.clone();
        let (outcome, poison) = self.context.with(|ctx| {
            let run = || -> Result<Outcome, Settle> {
                let host = host
                    .restore(&ctx)
                    .map_err(|e| Settle::Thrown(e.to_string()))?;
                let dispatch: Function = host
                    .get("dispatch")
                    .map_err(|e| Settle::Thrown(e.to_string()))?;
                let thrown = |e| Settle::Thrown(caught_text(CaughtError::from_error(&ctx, e), key));
                let payload = to_js(&ctx, payload).map_err(thrown)?;
                let meta = to_js(&ctx, meta).map_err(thrown)?;
                let answer: Value = dispatch
                    .call((kind, key, payload, meta))
                    .catch(&ctx)
                    .map_err(|e| Settle::Thrown(caught_text(e, key)))?;
                // A handler that returns a value (not a promise) is answered at once.
                let answer = match answer.as_promise() {
                    Some(promise) => settle(&ctx, promise, &deadline_cell)?,
                    None => answer,
                };
                let outcome = read_answer(&ctx, &host, answer, budget, deadline)?;
                // Leftover jobs (fire-and-forget promises) run now, within the deadline,
                // so nothing of this invocation runs during the next one.
                drain(&ctx, &deadline_cell)?;
                Ok(outcome)
            };
            match run() {
                Ok(outcome) => (outcome, false),
                Err(Settle::Timeout) => (Outcome::Timeout, true),
                Err(Settle::Stuck) => (
                    Outcome::Failed {
                        detail: "the handler's promise never settled".into(),
                    },
                    false,
                ),
                Err(Settle::Thrown(detail)) => (Outcome::Failed { detail }, true),
            }
        });
        let timed_out = Instant::now() >= deadline;
        self.deadline.set(None);
        let outcome = match outcome {
            Outcome::Failed { .. } if timed_out => Outcome::Timeout,
            other => other,
        };
        // Out of memory and stack overflow surface as caught errors inside the handler;
        // the runtime may be near its limits, so it is rebuilt either way.
        let fault = matches!(&outcome, Outcome::Failed { detail } if detail.contains("out of memory") || detail.contains("stack overflow"));
        self.poisoned = poison || timed_out || fault;
        if limits.is_some() {
            self.runtime.set_memory_limit(self.limits.memory);
            self.runtime.set_max_stack_size(self.limits.stack);
            // A handler allowed more memory may leave the isolate above the usual limit,
            // where the next handler would fail at once: rebuild it instead.
            let used = usize::try_from(self.memory_used()).unwrap_or(usize::MAX);
            self.poisoned |= used > self.limits.memory;
        }
        let leftovers: Vec<String> = self
            .unhandled
            .borrow_mut()
            .drain(..)
            .map(|(_, reason)| reason)
            .collect();
        if let Some(b) = self.bridge.borrow_mut().as_mut() {
            for reason in leftovers {
                b.log(
                    Level::Error,
                    format!("unhandled promise rejection: {reason}"),
                );
            }
        }
        self.bridge.borrow_mut().take();
        outcome
    }
}

/// The outcome of what `dispatch` answered: `[result]`, or an outcome's JSON text.
fn read_answer<'js>(
    ctx: &Ctx<'js>,
    host: &Object<'js>,
    answer: Value<'js>,
    budget: usize,
    deadline: Instant,
) -> Result<Outcome, Settle> {
    let bug = |what: &str| Settle::Thrown(format!("BUG: dispatch answered {what}"));
    if let Some(text) = answer.as_string() {
        let text = text.to_string().map_err(|_| bug("unreadable text"))?;
        return Ok(parse_outcome(&text));
    }
    let result: Value = answer
        .as_array()
        .ok_or_else(|| bug("neither text nor [result]"))?
        .get(0)
        .map_err(|_| bug("an unreadable [result]"))?;
    let mut reader = Reader {
        host,
        encode: None,
        object_prototype: None,
        budget,
        deadline,
        steps: 0,
    };
    Ok(match reader.read(Key::Name("ok"), result, 0) {
        Ok(value) => Outcome::Ok(value.unwrap_or(serde_json::Value::Null)),
        // As if `JSON.stringify` had thrown it inside the handler: `fb.error` stays a
        // rejection with its status.
        Err(Unreadable::Thrown) => {
            let thrown = ctx.catch();
            let described = host
                .get::<_, Function>("describe")
                .and_then(|d| d.call::<_, String>((thrown.clone(),)));
            match described {
                Ok(text) => parse_outcome(&text),
                Err(_) => Outcome::Failed {
                    detail: describe_value(&thrown),
                },
            }
        }
        Err(Unreadable::Other(why)) => Outcome::Failed {
            detail: format!("the result could not be read: {why}"),
        },
    })
}

/// Where a value sits in its parent: what `toJSON(key)` would be given.
#[derive(Clone, Copy)]
enum Key<'a> {
    Name(&'a str),
    Index(usize),
}

enum Unreadable {
    /// JS code (a getter, `toJSON`) threw; the exception is pending in the context.
    Thrown,
    Other(String),
}

impl From<rquickjs::Error> for Unreadable {
    fn from(e: rquickjs::Error) -> Self {
        match e {
            rquickjs::Error::Exception => Unreadable::Thrown,
            other => Unreadable::Other(other.to_string()),
        }
    }
}

/// Nesting deeper than this fails, as serde_json's parser did when results crossed as
/// text; it also ends a cycle of plain objects (`JSON.stringify` throws on those).
const MAX_RESULT_DEPTH: usize = 127;

/// Reads a handler's result into JSON without the text: the same value `JSON.stringify`
/// and then serde_json would make of it, at a fraction of the cost (QuickJS's stringify
/// was ~23 k instructions for a four-field document). Plain data only: plain objects,
/// arrays, strings, numbers, booleans and null are read directly, each property once
/// (getters run once, as in `stringify`). Anything else (a `Date`, a class instance, a
/// value with `toJSON`, a proxy, a `BigInt`) is handed to `JSON.stringify` as it stands,
/// before any of its properties was read, so it behaves exactly as it did.
struct Reader<'a, 'js> {
    host: &'a Object<'js>,
    encode: Option<Function<'js>>,
    object_prototype: Option<Object<'js>>,
    /// Bytes (roughly) the result may still take.
    budget: usize,
    deadline: Instant,
    steps: u32,
}

impl<'js> Reader<'_, 'js> {
    fn spend(&mut self, bytes: usize) -> Result<(), Unreadable> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            Unreadable::Other("it is larger than the function's memory limit".into())
        })?;
        // Native loops are out of the interrupt handler's reach.
        self.steps = self.steps.wrapping_add(1);
        if self.steps.is_multiple_of(4096) && Instant::now() >= self.deadline {
            return Err(Unreadable::Other("the deadline passed".into()));
        }
        Ok(())
    }

    /// `None` for what `JSON.stringify` leaves out (undefined, functions, symbols).
    fn read(
        &mut self,
        key: Key<'_>,
        value: Value<'js>,
        depth: usize,
    ) -> Result<Option<serde_json::Value>, Unreadable> {
        use rquickjs::Type;
        use serde_json::Value as J;
        self.spend(8)?;
        if value.is_proxy() {
            return self.encoded(key, value);
        }
        Ok(Some(match value.type_of() {
            Type::Undefined | Type::Uninitialized | Type::Symbol => return Ok(None),
            Type::Null => J::Null,
            Type::Bool => J::Bool(value.as_bool().unwrap_or_default()),
            Type::Int => J::from(value.as_int().unwrap_or_default()),
            Type::Float => number(value.as_float().unwrap_or(f64::NAN)),
            Type::String => {
                let text = value
                    .as_string()
                    .ok_or_else(|| Unreadable::Other("a string".into()))?
                    .to_string()?;
                self.spend(text.len())?;
                J::String(text)
            }
            Type::Function | Type::Constructor => {
                let object = value
                    .as_object()
                    .ok_or_else(|| Unreadable::Other("a function".into()))?;
                if object.contains_key("toJSON")? {
                    return self.encoded(key, value);
                }
                return Ok(None);
            }
            Type::Array => {
                let array = value
                    .as_array()
                    .ok_or_else(|| Unreadable::Other("an array".into()))?;
                if array.as_object().contains_key("toJSON")? {
                    return self.encoded(key, value);
                }
                self.nest(depth)?;
                let mut items = Vec::with_capacity(array.len().min(1024));
                for i in 0..array.len() {
                    let item: Value = array.get(i)?;
                    items.push(
                        self.read(Key::Index(i), item, depth + 1)?
                            .unwrap_or(J::Null),
                    );
                }
                J::Array(items)
            }
            Type::Object => {
                let object = value
                    .as_object()
                    .ok_or_else(|| Unreadable::Other("an object".into()))?;
                if !self.plain(object)? {
                    return self.encoded(key, value);
                }
                self.nest(depth)?;
                let mut map = serde_json::Map::new();
                for name in
                    object.own_keys::<String>(rquickjs::object::Filter::new().string().enum_only())
                {
                    let name = name?;
                    let item: Value = object.get(name.as_str())?;
                    if let Some(item) = self.read(Key::Name(&name), item, depth + 1)? {
                        self.spend(name.len())?;
                        map.insert(name, item);
                    }
                }
                J::Object(map)
            }
            _ => return self.encoded(key, value),
        }))
    }

    fn nest(&self, depth: usize) -> Result<(), Unreadable> {
        if depth >= MAX_RESULT_DEPTH {
            return Err(Unreadable::Other(format!(
                "it nests deeper than {MAX_RESULT_DEPTH} levels or refers to itself"
            )));
        }
        Ok(())
    }

    /// An object whose prototype is `Object.prototype` (or none) and that has no `toJSON`.
    fn plain(&mut self, object: &Object<'js>) -> Result<bool, Unreadable> {
        let expected = match &self.object_prototype {
            Some(p) => p.clone(),
            None => {
                let p = Object::new(object.ctx().clone())?
                    .get_prototype()
                    .ok_or_else(|| Unreadable::Other("no Object.prototype".into()))?;
                self.object_prototype = Some(p.clone());
                p
            }
        };
        let plain = object.get_prototype().is_none_or(|p| p == expected);
        Ok(plain && !object.contains_key("toJSON")?)
    }

    /// `JSON.stringify`'s own answer for `value`, read back with serde_json.
    fn encoded(
        &mut self,
        key: Key<'_>,
        value: Value<'js>,
    ) -> Result<Option<serde_json::Value>, Unreadable> {
        let encode = match &self.encode {
            Some(f) => f.clone(),
            None => {
                let f: Function = self.host.get("encode")?;
                self.encode = Some(f.clone());
                f
            }
        };
        let name = match key {
            Key::Name(n) => n.to_owned(),
            Key::Index(i) => i.to_string(),
        };
        let text: String = encode.call((name.as_str(), value))?;
        self.spend(text.len())?;
        let mut holder: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| Unreadable::Other(e.to_string()))?;
        Ok(holder.remove(&name))
    }
}

/// A JS number as `JSON.stringify` writes it and serde_json reads it back: integers as
/// integers (beyond 2^53 from the same shortest digits JS prints, so 2^63 reads as
/// 9223372036854776000), other finite values as floats, NaN and infinities as null.
fn number(f: f64) -> serde_json::Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if !f.is_finite() {
        return serde_json::Value::Null;
    }
    if f.fract() == 0.0 && f.abs() < EXACT {
        // Integral and below 2^53: the cast is exact.
        return serde_json::Value::from(f as i64);
    }
    if f.fract() == 0.0 && f.abs() < 1e21 {
        // Rust's `Display` pads the shortest digits with zeros, as JS does in this range.
        if let Ok(n) = format!("{f}").parse::<serde_json::Number>() {
            return serde_json::Value::Number(n);
        }
    }
    serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

fn parse_outcome(text: &str) -> Outcome {
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(default)]
        ok: Option<serde_json::Value>,
        #[serde(default)]
        missing: bool,
        #[serde(default)]
        error: Option<ReplyError>,
    }
    #[derive(serde::Deserialize)]
    struct ReplyError {
        status: Option<u16>,
        message: String,
        #[serde(default)]
        stack: String,
    }
    match serde_json::from_str::<Reply>(text) {
        Ok(Reply { missing: true, .. }) => Outcome::Missing,
        Ok(Reply {
            error:
                Some(ReplyError {
                    status: Some(status),
                    message,
                    ..
                }),
            ..
        }) => Outcome::Rejected { status, message },
        Ok(Reply {
            error: Some(ReplyError { message, stack, .. }),
            ..
        }) => Outcome::Failed {
            detail: if stack.is_empty() {
                message
            } else {
                format!("{message}\n{stack}")
            },
        },
        Ok(Reply { ok, .. }) => Outcome::Ok(ok.unwrap_or(serde_json::Value::Null)),
        Err(e) => Outcome::Failed {
            detail: format!("the result could not be read: {e}"),
        },
    }
}

enum Settle {
    Timeout,
    /// No job left to run and the promise is still pending.
    Stuck,
    Thrown(String),
}

/// Runs the job queue until `promise` settles, the queue runs dry, or the deadline passes.
fn settle<'js, T: rquickjs::FromJs<'js>>(
    ctx: &Ctx<'js>,
    promise: &Promise<'js>,
    deadline: &Cell<Option<Instant>>,
) -> Result<T, Settle> {
    loop {
        if let Some(result) = promise.result::<T>() {
            return result
                .catch(ctx)
                .map_err(|e| Settle::Thrown(caught_text(e, "")));
        }
        if deadline.get().is_some_and(|d| Instant::now() >= d) {
            return Err(Settle::Timeout);
        }
        if !ctx.execute_pending_job() {
            return Err(Settle::Stuck);
        }
    }
}

/// Runs every pending job, within the deadline.
fn drain(ctx: &Ctx<'_>, deadline: &Cell<Option<Instant>>) -> Result<(), Settle> {
    while ctx.execute_pending_job() {
        if deadline.get().is_some_and(|d| Instant::now() >= d) {
            return Err(Settle::Timeout);
        }
    }
    Ok(())
}

/// The JS value `JSON.parse` makes of `value`'s JSON text, built without the text: plain
/// objects with own data properties (so a `__proto__` key is a key, never a prototype),
/// arrays, strings, numbers, booleans and null. Cheaper than serializing and parsing: the
/// engine's parser costs ~700 instructions per token (callgrind; see BENCHMARKS.md).
fn to_js<'js>(ctx: &Ctx<'js>, value: &serde_json::Value) -> rquickjs::Result<Value<'js>> {
    use serde_json::Value as J;
    Ok(match value {
        J::Null => Value::new_null(ctx.clone()),
        J::Bool(b) => Value::new_bool(ctx.clone(), *b),
        J::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Value::new_int(ctx.clone(), i),
            None => Value::new_float(ctx.clone(), n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        J::Array(items) => {
            let array = rquickjs::Array::new(ctx.clone())?;
            for (i, item) in items.iter().enumerate() {
                array.set(i, to_js(ctx, item)?)?;
            }
            array.into_value()
        }
        J::Object(map) => {
            let object = Object::new(ctx.clone())?;
            for (key, item) in map {
                let item = to_js(ctx, item)?;
                if key == "__proto__" {
                    object.prop(
                        key.as_str(),
                        Property::from(item).writable().enumerable().configurable(),
                    )?;
                } else {
                    object.set(key.as_str(), item)?;
                }
            }
            object.into_value()
        }
    })
}

fn caught_text(e: CaughtError<'_>, place: &str) -> String {
    let text = match e {
        CaughtError::Exception(ex) => {
            let message = ex.message().unwrap_or_default();
            let stack = ex.stack().unwrap_or_default();
            if stack.is_empty() {
                message
            } else {
                format!("{message}\n{stack}")
            }
        }
        CaughtError::Value(v) => describe_value(&v),
        CaughtError::Error(e) => e.to_string(),
    };
    if place.is_empty() {
        text
    } else {
        format!("{place}: {text}")
    }
}

fn describe_value(v: &Value<'_>) -> String {
    if let Some(s) = v.as_string() {
        return s.to_string().unwrap_or_default();
    }
    if let Some(ex) = v.as_exception() {
        return ex.message().unwrap_or_default();
    }
    format!("a thrown {}", v.type_name())
}

/// The native decoders of object bodies (which cross the bridge as base64): to an
/// `ArrayBuffer`, or (`text`) to a string read as UTF-8.
fn base64_function<'js>(ctx: &Ctx<'js>, text: bool) -> rquickjs::Result<Function<'js>> {
    Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, encoded: Value<'js>| -> rquickjs::Result<Value<'js>> {
            use base64::Engine;
            let decoded = encoded
                .as_string()
                .and_then(|s| s.to_string().ok())
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .ok_or_else(|| rquickjs::Exception::throw_type(&ctx, "not a body"))?;
            if text {
                let s = String::from_utf8_lossy(&decoded);
                Ok(rquickjs::String::from_str(ctx, &s)?.into_value())
            } else {
                Ok(rquickjs::ArrayBuffer::new_copy(ctx, decoded)?.into_value())
            }
        },
    )
}

fn op_function<'js>(ctx: &Ctx<'js>, bridge: SharedBridge) -> rquickjs::Result<Function<'js>> {
    Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, name: Value<'js>, args: Value<'js>| host_op(&ctx, &bridge, name, args),
    )
}

/// The native `op(name, argsJson)`: checks the arguments, calls the bridge, and answers
/// with `{"ok": …}` or `{"err": {status, code, message}}` text.
fn host_op<'js>(
    ctx: &Ctx<'js>,
    bridge: &SharedBridge,
    name: Value<'js>,
    args: Value<'js>,
) -> rquickjs::Result<String> {
    let (Some(name), Some(args)) = (name.as_string(), args.as_string()) else {
        return Err(rquickjs::Exception::throw_type(
            ctx,
            "host operations take (name, json)",
        ));
    };
    let name = name.to_string()?;
    let args = args.to_string()?;
    if args.len() > MAX_BRIDGE_TEXT {
        return Err(rquickjs::Exception::throw_range(
            ctx,
            &format!("{name}: the arguments exceed {} MiB", MAX_BRIDGE_TEXT >> 20),
        ));
    }
    let reply = match bridge.borrow_mut().as_mut() {
        Some(b) => b.op(&name, &args),
        None => {
            return Err(rquickjs::Exception::throw_internal(
                ctx,
                "host operations are only available during an invocation",
            ));
        }
    };
    let text = match reply {
        Ok(value) => serde_json::json!({ "ok": value }).to_string(),
        Err(e) => serde_json::json!({ "err": { "status": e.status, "code": e.code, "message": e.message } })
            .to_string(),
    };
    if text.len() > MAX_BRIDGE_TEXT {
        return Err(rquickjs::Exception::throw_range(
            ctx,
            &format!("{name}: the result exceeds {} MiB", MAX_BRIDGE_TEXT >> 20),
        ));
    }
    Ok(text)
}

/// Top-level `.js`/`.mjs` files are entry modules; files in folders load only when imported.
pub fn is_entry(path: &str) -> bool {
    !path.contains('/') && (path.ends_with(".js") || path.ends_with(".mjs"))
}

/// Resolves `ferrobase` and relative imports inside the bundle; nothing else.
struct BundleResolver {
    files: Files,
}

impl Resolver for BundleResolver {
    fn resolve<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        if name == "ferrobase" {
            return Ok(name.into());
        }
        let refuse = || {
            rquickjs::Error::new_resolving_message(
                base,
                name,
                "only `ferrobase` and relative imports of files in the functions bundle are allowed",
            )
        };
        let _ = ctx;
        if !(name.starts_with("./") || name.starts_with("../")) {
            // Entry modules are imported by their bundle path.
            if self.files.contains_key(name) && is_entry(name) {
                return Ok(name.into());
            }
            return Err(refuse());
        }
        let dir = match base.rfind('/') {
            Some(i) => &base[..i],
            None => "",
        };
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for part in name.split('/') {
            match part {
                "." | "" => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(refuse());
                    }
                }
                p => parts.push(p),
            }
        }
        let path = parts.join("/");
        if self.files.contains_key(&path) {
            Ok(path)
        } else {
            Err(refuse())
        }
    }
}

/// Loads the host module and bundle files (source only: bytecode is never accepted).
struct BundleLoader {
    files: Files,
}

impl Loader for BundleLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, Declared>> {
        if name == "ferrobase" {
            return Module::declare(ctx.clone(), "ferrobase", PRELUDE);
        }
        match self.files.get(name) {
            Some(source) => Module::declare(ctx.clone(), name, source.as_str()),
            None => Err(rquickjs::Error::new_loading(name)),
        }
    }
}
