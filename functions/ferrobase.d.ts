// Types for Ferrobase cloud code: point your editor (or `tsc --checkJs`) at this file to
// type-check functions. The module "ferrobase" is provided by the server; there is nothing
// to install. See docs/functions.md.

declare module "ferrobase" {
  /** The caller as verified from the access token; null for anonymous calls. */
  export interface Auth {
    id?: string;
    role: string;
    anonymous?: boolean;
    email?: string | null;
    email_verified?: boolean;
    claims?: Record<string, unknown>;
    /** Present (true) for admins. */
    admin?: boolean;
    /** Present (true) for the service key (cron runs, ctx.admin). */
    service?: boolean;
  }

  /** A stored document: your fields plus the system fields. */
  export type Doc<T = Record<string, unknown>> = T & {
    _id: string;
    _owner: string | null;
    _created_at: string;
    _updated_at: string;
    _version: number;
  };

  export interface Page<T = Record<string, unknown>> {
    items: Doc<T>[];
    next_cursor: string | null;
    count?: number;
  }

  export interface Query<T = Record<string, unknown>> {
    /** The query language of GET /v1/db/{collection}?where=… */
    where(filter: Record<string, unknown>): Query<T>;
    /** "-score", "title,-_created_at" */
    sort(sort: string): Query<T>;
    limit(n: number): Query<T>;
    offset(n: number): Query<T>;
    cursor(cursor: string): Query<T>;
    /** Also return the number of matching documents. */
    count(): Query<T>;
    get(): Promise<Page<T>>;
  }

  export interface DocRef<T = Record<string, unknown>> {
    /** The document, or null when it does not exist or the caller may not read it. */
    get(): Promise<Doc<T> | null>;
    /** Replace (creating it when missing). */
    set(data: T): Promise<Doc<T>>;
    /** Merge, or update operators such as { $inc: { n: 1 } }. */
    update(data: Record<string, unknown>): Promise<Doc<T>>;
    delete(): Promise<null>;
  }

  export interface CollectionRef<T = Record<string, unknown>> extends Query<T> {
    add(data: T & { _id?: string }): Promise<Doc<T>>;
    doc(id: string): DocRef<T>;
  }

  export interface BatchOp {
    op: "create" | "update" | "replace" | "delete";
    collection: string;
    id?: string;
    data?: Record<string, unknown>;
    if_match?: number;
    upsert?: boolean;
  }

  export interface Database {
    collection<T = Record<string, unknown>>(name: string): CollectionRef<T>;
    /** All or nothing. */
    batch(ops: BatchOp[]): Promise<unknown[]>;
  }

  /** An object as the storage API shows it. */
  export interface StoredObject {
    bucket: string;
    key: string;
    size: number;
    content_type: string;
    etag: string;
    metadata: Record<string, string>;
    /** The user who uploaded it (null when written by the service or an admin). */
    owner: string | null;
    created_at: string;
    updated_at: string;
  }

  /** A downloaded object: its fields, and its bytes read three ways. */
  export interface Download extends StoredObject {
    /** The bytes read as UTF-8 (invalid sequences become U+FFFD). */
    text(): string;
    json(): unknown;
    bytes(): Uint8Array;
  }

  export interface PutOptions {
    /** Default: `text/plain; charset=utf-8` for a string, `application/octet-stream` for bytes. */
    contentType?: string;
    /** String values; names are lower-cased (letters, digits, `-`, `_`). */
    metadata?: Record<string, string>;
  }

  export interface BucketRef {
    /** Creates or replaces; bodies up to 4 MiB (sign a PUT URL for larger ones). */
    put(key: string, body: string | Uint8Array | ArrayBuffer | ArrayBufferView, options?: PutOptions): Promise<StoredObject>;
    /** Null when missing or hidden by the read rule; objects up to 4 MiB. */
    get(key: string): Promise<Download | null>;
    head(key: string): Promise<StoredObject | null>;
    /** True when an object was deleted, false when there was none. */
    delete(key: string): Promise<boolean>;
    /** Keys in order; `limit` 1-1000 (default 100); only objects the caller may read. */
    list(options?: { prefix?: string; cursor?: string; limit?: number }): Promise<{ items: StoredObject[]; next_cursor: string | null }>;
    /** A URL that works without a token until it expires (default 3600 s). */
    signUrl(key: string, options?: { method?: "GET" | "PUT"; expiresIn?: number }): Promise<{ url: string; method: string; expires_at: number }>;
  }

  export interface Storage {
    bucket(name: string): BucketRef;
  }

  export interface Logger {
    debug(...args: unknown[]): void;
    log(...args: unknown[]): void;
    info(...args: unknown[]): void;
    warn(...args: unknown[]): void;
    error(...args: unknown[]): void;
  }

  export interface Context {
    auth: Auth | null;
    /** As the caller: collection rules apply. */
    db: Database;
    /** As the caller: the bucket rules apply. */
    storage: Storage;
    /** Bypasses rules. */
    admin: { db: Database; storage: Storage };
    /** functions.env merged with functions.handlers.<name>.env. */
    env: Readonly<Record<string, string>>;
    log: Logger;
    /** The handler's name and this invocation's id (as in the logs). */
    function: string;
    invocation: string;
  }

  export interface CallRequest<D = unknown> {
    /** The JSON body of POST /v1/functions/{name}. */
    data: D;
    auth: Auth | null;
  }

  export interface BeforeEvent<T = Record<string, unknown>> {
    collection: string;
    op: "create" | "update" | "replace" | "delete";
    id: string | null;
    auth: Auth | null;
    /** The incoming document (create/replace) or update (update); change it in place. */
    data: T;
    /** The stored document (null on create). */
    doc: Doc<T> | null;
  }

  export interface AfterEvent<T = Record<string, unknown>> {
    collection: string;
    op: "create" | "update" | "delete";
    id: string;
    /** Only `id` is known for after-triggers (the change log keeps the writer's id). */
    auth: Auth | null;
    /** As committed; null after a delete. */
    doc: Doc<T> | null;
    before: Doc<T> | null;
    seq: number;
  }

  export interface ObjectEvent {
    bucket: string;
    key: string;
    op: "upload" | "delete";
    object: Record<string, unknown> | null;
    before: Record<string, unknown> | null;
    seq: number;
    auth: Auth | null;
  }

  export interface AuthEvent {
    op: "signup" | "login" | "delete";
    user: { id: string; email?: string | null; [k: string]: unknown };
    seq: number;
    auth: Auth | null;
  }

  export interface CronEvent {
    name: string;
    /** The scheduled time this run is for (RFC 3339). */
    tick: string;
  }

  type Awaitable<T> = T | Promise<T>;

  /** An error that reaches the client with this status: `throw fb.error(400, "…")`. */
  export class FunctionError extends Error {
    status: number;
    code?: string;
  }

  export const fb: {
    call<D = unknown, R = unknown>(name: string, handler: (req: CallRequest<D>, ctx: Context) => Awaitable<R>): void;
    beforeCreate(collection: string, handler: (e: BeforeEvent, ctx: Context) => Awaitable<void>): void;
    beforeUpdate(collection: string, handler: (e: BeforeEvent, ctx: Context) => Awaitable<void>): void;
    beforeDelete(collection: string, handler: (e: BeforeEvent, ctx: Context) => Awaitable<void>): void;
    afterCreate(collection: string, handler: (e: AfterEvent, ctx: Context) => Awaitable<unknown>): void;
    afterUpdate(collection: string, handler: (e: AfterEvent, ctx: Context) => Awaitable<unknown>): void;
    afterDelete(collection: string, handler: (e: AfterEvent, ctx: Context) => Awaitable<unknown>): void;
    /** An object was stored in (or replaced in) a bucket. */
    afterUpload(bucket: string, handler: (e: ObjectEvent, ctx: Context) => Awaitable<unknown>): void;
    /** An object was deleted from a bucket. */
    afterObjectDelete(bucket: string, handler: (e: ObjectEvent, ctx: Context) => Awaitable<unknown>): void;
    onAuth(event: "signup" | "login" | "delete", handler: (e: AuthEvent, ctx: Context) => Awaitable<unknown>): void;
    /** 5 fields, or 6 with leading seconds. */
    cron(name: string, expression: string, handler: (ctx: Context, e: CronEvent) => Awaitable<unknown>): void;
    error(status: number, message: string): FunctionError;
  };
}

/** Only when functions.fetch_allow lists hosts; otherwise `fetch` is undefined. */
declare function fetch(
  url: string,
  init?: { method?: string; headers?: Record<string, string>; body?: string },
): Promise<{ status: number; ok: boolean; headers: Record<string, string>; text(): Promise<string>; json(): Promise<any> }>;
