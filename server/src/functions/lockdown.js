// Run once per isolate after the user's modules have loaded: freezes every intrinsic so
// one invocation cannot change what the next one sees (Object.prototype, JSON, globals).
//
// Freezing a prototype turns `obj.toString = f` on an ordinary object into a TypeError in
// strict code (the "override mistake"), which breaks everyday code such as
// `this.name = "MyError"` in an Error subclass. For the properties code commonly shadows,
// the data property becomes an accessor whose setter defines an own property on the
// receiver instead, as SES does.
(() => {
  const { getOwnPropertyDescriptor, defineProperty, getPrototypeOf, freeze } = Object;
  const ownKeys = Reflect.ownKeys;
  const overridable = [
    [Object.prototype, ["toString", "valueOf", "constructor", "hasOwnProperty", "toLocaleString", "isPrototypeOf", "propertyIsEnumerable"]],
    [Error.prototype, ["name", "message", "toString", "constructor"]],
    [Array.prototype, ["toString", "constructor", "push", "join", "map", "filter", "forEach"]],
    [Function.prototype, ["toString", "constructor", "call", "apply", "bind"]],
    [Promise.prototype, ["then", "catch", "finally", "constructor"]],
  ];
  for (const [proto, names] of overridable) {
    for (const name of names) {
      const d = getOwnPropertyDescriptor(proto, name);
      if (!d || !("value" in d) || !d.configurable) continue;
      const value = d.value;
      defineProperty(proto, name, {
        configurable: false,
        enumerable: d.enumerable,
        get() {
          return value;
        },
        set(v) {
          if (this === proto) throw new TypeError(`Cannot assign to read only property '${name}'`);
          defineProperty(this, name, { value: v, writable: true, enumerable: true, configurable: true });
        },
      });
    }
  }
  const seen = new WeakSet();
  const walk = (o) => {
    if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) return;
    seen.add(o);
    freeze(o);
    for (const k of ownKeys(o)) {
      const d = getOwnPropertyDescriptor(o, k);
      if ("value" in d) walk(d.value);
      else {
        walk(d.get);
        walk(d.set);
      }
    }
    walk(getPrototypeOf(o));
  };
  walk(globalThis);
  // Intrinsics no global names: generator and async function constructors, iterators.
  walk(function* () {});
  walk(async function () {});
  walk(async function* () {});
  walk([][Symbol.iterator]());
  walk(new Map()[Symbol.iterator]());
  walk(new Set()[Symbol.iterator]());
  walk(""[Symbol.iterator]());
  walk("x".matchAll(/x/g));
  walk(getPrototypeOf(Int8Array));
  walk((function* () {})());
  walk((async function* () {})());
})();
