// The `ferrobase` host module. Evaluated first in every isolate, before any user module.
// It takes the native bridge from a global the engine sets and deletes it at once, so user
// code can reach the host only through `fb` and the `ctx` handed to each handler.
const host = globalThis.__fb_host;
delete globalThis.__fb_host;
const hostOp = host.op;
const hostLog = host.log;
const hostBytes = host.bytes;
const hostUtf8 = host.utf8;
const fromCharCode = String.fromCharCode;
const isView = ArrayBuffer.isView;
const stringify = JSON.stringify;
const parse = JSON.parse;
const freeze = Object.freeze;
const keys = Object.keys;

const registry = { call: new Map(), trigger: new Map(), cron: new Map(), auth: new Map() };
let sealed = false;

/** An error a handler throws to answer with an HTTP status: `throw fb.error(400, "…")`. */
export class FunctionError extends Error {
  constructor(status, message) {
    super(String(message));
    const s = Number(status);
    this.status = Number.isInteger(s) && s >= 400 && s <= 599 ? s : 500;
  }
}
Object.defineProperty(FunctionError.prototype, "name", { value: "FunctionError" });

function register(kind, key, handler) {
  if (sealed) throw new TypeError("register handlers at the top level of a module");
  if (typeof key !== "string" || key.length === 0 || key.length > 128) {
    throw new TypeError(`${kind}: the name must be a non-empty string`);
  }
  if (typeof handler !== "function") throw new TypeError(`${kind} ${key}: the handler must be a function`);
  const map = registry[kind === "call" || kind === "cron" || kind === "auth" ? kind : "trigger"];
  const full = kind === "call" || kind === "cron" || kind === "auth" ? key : `${kind}:${key}`;
  if (map.has(full)) throw new TypeError(`${kind} ${key} is registered twice`);
  map.set(full, handler);
}

const NAME = /^[A-Za-z][A-Za-z0-9_-]{0,127}$/;
const trigger = (kind) => (target, handler) => register(kind, target, handler);

export const fb = freeze({
  call(name, handler) {
    if (typeof name !== "string" || !NAME.test(name)) {
      throw new TypeError("fb.call: names are 1-128 letters, digits, `_` or `-`, starting with a letter");
    }
    register("call", name, handler);
  },
  beforeCreate: trigger("beforeCreate"),
  afterCreate: trigger("afterCreate"),
  beforeUpdate: trigger("beforeUpdate"),
  afterUpdate: trigger("afterUpdate"),
  beforeDelete: trigger("beforeDelete"),
  afterDelete: trigger("afterDelete"),
  afterUpload: trigger("afterUpload"),
  afterObjectDelete: trigger("afterObjectDelete"),
  onAuth(event, handler) {
    if (!["signup", "login", "delete"].includes(event)) {
      throw new TypeError('fb.onAuth: the event is "signup", "login" or "delete"');
    }
    register("auth", event, handler);
  },
  cron(name, expr, handler) {
    if (typeof expr !== "string") throw new TypeError("fb.cron: the schedule must be a string");
    register("cron", name, handler);
    cronExprs.push([name, expr]);
  },
  error(status, message) {
    return new FunctionError(status, message);
  },
});
const cronExprs = [];

// ---- the bridge ----

function op(name, args) {
  let text;
  try {
    text = stringify(args);
  } catch (e) {
    throw new TypeError(`${name}: the arguments are not JSON (${e && e.message})`);
  }
  const out = parse(hostOp(name, text === undefined ? "null" : text));
  if (out.err) {
    const e = new FunctionError(out.err.status, out.err.message);
    e.code = out.err.code;
    throw e;
  }
  return out.ok;
}

// A promise of `build()`: settled with its value, or rejected with what it threw.
const attempt = (build) => {
  try {
    return Promise.resolve(build());
  } catch (e) {
    return Promise.reject(e);
  }
};

const run = (name, args) => attempt(() => op(name, args));

function query(as, collection, q) {
  const next = (patch) => query(as, collection, { ...q, ...patch });
  return freeze({
    where: (filter) => next({ where: filter }),
    sort: (sort) => next({ sort }),
    limit: (limit) => next({ limit }),
    offset: (offset) => next({ offset }),
    cursor: (cursor) => next({ cursor }),
    count: () => next({ count: true }),
    get: () => run("db.query", { as, collection, ...q }),
  });
}

function database(as) {
  return freeze({
    collection(name) {
      return freeze({
        add: (data) => run("db.create", { as, collection: name, data }),
        doc: (id) =>
          freeze({
            get: () => run("db.get", { as, collection: name, id }),
            set: (data) => run("db.replace", { as, collection: name, id, data }),
            update: (data) => run("db.update", { as, collection: name, id, data }),
            delete: () => run("db.delete", { as, collection: name, id }),
          }),
        ...query(as, name, {}),
      });
    },
    batch: (ops) => run("db.batch", { as, ops }),
  });
}

// ---- storage ----

const MAX_OBJECT = 4 << 20;

// A body crosses the bridge as JSON: a string as itself, bytes one char per byte.
function bodyArgs(body) {
  if (typeof body === "string") return { text: body };
  let view;
  if (body instanceof ArrayBuffer) view = new Uint8Array(body);
  else if (isView(body)) view = new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  else {
    throw new TypeError("put: the body is a string, a Uint8Array or an ArrayBuffer (JSON.stringify objects first)");
  }
  if (view.length > MAX_OBJECT) {
    throw new RangeError(`put: functions write objects of at most ${MAX_OBJECT >> 20} MiB; sign a URL for larger ones`);
  }
  let binary = "";
  for (let i = 0; i < view.length; i += 8192) binary += fromCharCode.apply(null, view.subarray(i, i + 8192));
  return { binary };
}

function downloaded(r) {
  if (r === null) return null;
  const body = r.body;
  return freeze({
    ...r.object,
    text: () => hostUtf8(body),
    json: () => parse(hostUtf8(body)),
    bytes: () => new Uint8Array(hostBytes(body)),
  });
}

function storage(as) {
  return freeze({
    bucket(bucket) {
      const args = (key, extra) => ({ as, bucket, key: key === undefined ? undefined : String(key), ...extra });
      return freeze({
        put: (key, body, options) =>
          attempt(() => {
            const o = options || {};
            return op(
              "storage.put",
              args(key, { ...bodyArgs(body), content_type: o.contentType, metadata: o.metadata }),
            );
          }),
        get: (key) => run("storage.get", args(key)).then(downloaded),
        head: (key) => run("storage.head", args(key)),
        delete: (key) => run("storage.delete", args(key)),
        list: (options) => {
          const o = options || {};
          return run("storage.list", { as, bucket, prefix: o.prefix, cursor: o.cursor, limit: o.limit });
        },
        signUrl: (key, options) => {
          const o = options || {};
          return run("storage.sign", args(key, { method: o.method, expires_in: o.expiresIn }));
        },
      });
    },
  });
}

function format(args) {
  let out = "";
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    let s;
    if (typeof a === "string") s = a;
    else if (a instanceof Error) s = `${a.name}: ${a.message}`;
    else {
      try {
        s = stringify(a);
      } catch {
        s = String(a);
      }
      if (s === undefined) s = String(a);
    }
    out += (i ? " " : "") + s;
    if (out.length > 4096) return out.slice(0, 4096) + "…";
  }
  return out;
}

const logger = freeze({
  debug: (...a) => hostLog("debug", format(a)),
  log: (...a) => hostLog("info", format(a)),
  info: (...a) => hostLog("info", format(a)),
  warn: (...a) => hostLog("warn", format(a)),
  error: (...a) => hostLog("error", format(a)),
});
globalThis.console = logger;

const dbAsCaller = database("caller");
const dbAsAdmin = database("admin");
const storageAsCaller = storage("caller");
const admin = freeze({ db: dbAsAdmin, storage: storage("admin") });

if (host.fetch) {
  globalThis.fetch = (url, init) =>
    run("fetch", { url: String(url), ...(init || {}) }).then((r) =>
      freeze({
        status: r.status,
        ok: r.status >= 200 && r.status < 300,
        headers: freeze(r.headers),
        text: () => Promise.resolve(r.body),
        json: () => Promise.resolve(parse(r.body)),
      }),
    );
}

function describe(e) {
  let status = null;
  let message = "";
  let stack = "";
  try {
    if (e instanceof FunctionError) status = e.status;
    message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    if (e instanceof FunctionError) message = e.message;
    stack = e instanceof Error && typeof e.stack === "string" ? e.stack : "";
  } catch {
    message = "a value that cannot be shown was thrown";
  }
  return stringify({ error: { status, message: message.slice(0, 2048), stack: stack.slice(0, 4096) } });
}

// Runs a handler. `payload` and `meta` arrive as fresh objects (the engine builds them as
// `JSON.parse` would). Answers `[result]` (the engine reads it as `JSON.stringify` would,
// see `engine::Reader`), an outcome's JSON text (a missing handler or an error), or, when
// the handler returned a promise (an async handler), a promise of one of those.
host.dispatch = function dispatch(kind, key, payload, meta) {
  try {
    const handler = registry[kind] && registry[kind].get(key);
    if (!handler) return MISSING;
    const ctx = freeze({
      auth: meta.auth ? freeze(meta.auth) : null,
      env: freeze(meta.env || {}),
      function: meta.function,
      invocation: meta.invocation,
      db: dbAsCaller,
      storage: storageAsCaller,
      admin,
      log: logger,
    });
    let result;
    let answer = wrap;
    if (kind === "call") {
      result = handler(freeze({ data: payload.data, auth: ctx.auth }), ctx);
    } else if (kind === "cron") {
      result = handler(ctx, freeze({ name: key, tick: payload.tick }));
    } else {
      // Trigger and auth events: before-triggers may change `e.data`, which is returned.
      const e = payload;
      e.auth = ctx.auth;
      result = handler(e, ctx);
      if (key.startsWith("before")) answer = () => [e.data];
    }
    if (result !== null && (typeof result === "object" || typeof result === "function") && typeof result.then === "function") {
      return Promise.resolve(result).then(answer).then(undefined, describe);
    }
    return answer(result);
  } catch (e) {
    return describe(e);
  }
};

const MISSING = stringify({ missing: true });
const wrap = (result) => [result];

// What the engine's reader hands back for a value that is not plain data (a Date, a class
// instance, anything with `toJSON`, a proxy): its JSON text as the property `key` of an
// object, so `toJSON(key)` sees the key it would in `JSON.stringify` of the whole result.
host.encode = (key, value) => stringify({ [key]: value });
host.describe = describe;

host.manifest = () =>
  stringify({
    calls: [...registry.call.keys()],
    triggers: [...registry.trigger.keys()],
    crons: cronExprs,
    auth: [...registry.auth.keys()],
  });

host.seal = () => {
  sealed = true;
};
