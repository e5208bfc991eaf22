// The demo app: a todo list's backend logic. `ferrobase serve` deploys this folder as a
// version when it changes (with --dev, on every save). See docs/functions.md.
import { fb } from "ferrobase";
import { slug } from "./lib/text.js";

// POST /v1/functions/addTodo {"title": "Buy milk"} — creates a todo as the caller, so the
// collection's rules apply exactly as they would to the client.
fb.call("addTodo", async (req, ctx) => {
  if (!ctx.auth) throw fb.error(401, "sign in first");
  const title = String(req.data?.title ?? "").trim();
  if (!title) throw fb.error(400, "a todo needs a title");
  const todo = await ctx.db.collection("todos").add({ title, done: false });
  return { id: todo._id, slug: todo.slug };
});

// POST /v1/functions/stats — counts the caller's open and done todos.
fb.call("stats", async (req, ctx) => {
  if (!ctx.auth) throw fb.error(401, "sign in first");
  const todos = ctx.db.collection("todos");
  const open = await todos.where({ _owner: ctx.auth.id, done: false }).count().limit(0).get();
  const done = await todos.where({ _owner: ctx.auth.id, done: true }).count().limit(0).get();
  return { open: open.count, done: done.count };
});

// Every write to `todos` gets a tidy title and a slug, whoever makes it.
fb.beforeCreate("todos", (e) => {
  const title = String(e.data.title ?? "").trim();
  if (title.length > 200) throw fb.error(400, "titles are at most 200 characters");
  e.data.title = title;
  e.data.slug = slug(title);
});

// After-triggers run from the durable queue: retried, then kept as dead letters.
fb.afterCreate("todos", (e, ctx) => {
  ctx.log.info(`todo ${e.id} created by ${e.auth?.id ?? "someone anonymous"}`);
});

fb.onAuth("signup", (e, ctx) => {
  ctx.log.info(`welcome, ${e.user.email ?? "anonymous user"}`);
});

// 03:00 every night (5 fields; 6 with leading seconds).
fb.cron("nightly", "0 3 * * *", async (ctx, e) => {
  ctx.log.info(`nightly run for tick ${e.tick}`);
});
