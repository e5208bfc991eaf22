//! `GET /v1/realtime`: the WebSocket. This module owns the socket — reading frames,
//! writing the connection's outbox, pings, close codes — and hands every text frame to the
//! connection's [`Session`](crate::realtime::Session).

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::client_ip::ClientInfo;
use super::error::ApiError;
use crate::app::AppState;
use crate::auth::{Caller, Principal};
use crate::realtime::conn::close;
use crate::realtime::{Conn, Out};

/// Opens a realtime connection (WebSocket; the protocol is in docs/realtime.md).
#[utoipa::path(
    get,
    path = "/v1/realtime",
    tag = "realtime",
    responses(
        (status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket request", body = super::error::ErrorBody),
    )
)]
pub async fn realtime(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(_) => {
            return ApiError::bad_request(
                "this endpoint speaks WebSocket; send an Upgrade: websocket request",
            )
            .into_response();
        }
    };
    let Some(slot) = app.realtime.admit(client.ip) else {
        return ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many realtime connections from this address",
        )
        .into_response();
    };
    // A bearer token at the upgrade counts as the first `auth` frame.
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let config = app.realtime.config();
    let max = config.max_frame;
    // Small socket buffers: an idle connection should cost a few KiB, not tungstenite's
    // default 128 KiB read buffer.
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            run(app, socket, client.ip, token).await;
            drop(slot);
        })
}

async fn run(app: AppState, socket: WebSocket, ip: std::net::IpAddr, token: Option<String>) {
    let config = app.realtime.config().clone();
    let caller = Caller {
        principal: Principal::Anonymous,
        ip: Some(ip),
        method: "GET",
        depth: 0,
    };
    let (conn, outbox) = Conn::new(caller, config.send_queue);
    let mut session = app.realtime.session(conn.clone());
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, outbox, conn.clone()));
    if let Some(token) = token {
        let frame = serde_json::json!({"type": "auth", "token": token}).to_string();
        session.handle_text(&frame).await;
    }
    let mut stop = app.realtime.stopping();
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let mut heard = tokio::time::Instant::now();
    // One timer for the connection's life, not one per frame.
    let end_of_life = tokio::time::sleep(config.max_connection_lifetime);
    tokio::pin!(end_of_life);
    let mut bucket = TokenBucket::new(config.max_messages_per_second);
    loop {
        let deadline = session.deadline();
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(_) | Message::Binary(_))) if !bucket.take() => {
                    heard = tokio::time::Instant::now();
                    if bucket.strikes > u64::from(config.max_messages_per_second) * 2 {
                        conn.close(close::FLOOD, "too many messages; slow down");
                        break;
                    }
                    conn.push(crate::realtime::protocol::error(
                        None,
                        "rate_limited",
                        "too many messages; this one was dropped",
                    ));
                }
                Some(Ok(Message::Text(text))) => {
                    heard = tokio::time::Instant::now();
                    session.handle_text(text.as_str()).await;
                }
                Some(Ok(Message::Binary(_))) => {
                    heard = tokio::time::Instant::now();
                    conn.push(crate::realtime::protocol::error(
                        None,
                        "bad_request",
                        "send JSON in text frames",
                    ));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    heard = tokio::time::Instant::now();
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    // tungstenite: "Space limit exceeded: Message too long: N > M".
                    let too_big = e.to_string().contains("too long");
                    if too_big {
                        conn.close(close::TOO_BIG, "the frame is larger than realtime.max_frame");
                    }
                    break;
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() > config.ping_interval * 3 {
                    conn.close(close::DEAD_PEER, "no answer to pings");
                    break;
                }
                conn.push_out(Out::Ping);
            }
            _ = sleep_until(deadline), if deadline.is_some() => session.on_deadline().await,
            _ = &mut end_of_life => {
                conn.close(close::LIFETIME, "the connection reached its lifetime; reconnect and resume");
                break;
            }
            _ = async { let _ = stop.wait_for(|s| *s).await.is_ok(); } => {
                conn.close(close::GOING_AWAY, "the server is shutting down");
                break;
            }
            _ = conn.closed() => break,
        }
    }
    session.finish().await;
    conn.close(1000, "");
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// Frames a client may send: `rate` per second, bursts of `2 × rate`. `strikes` counts
/// frames refused since the client last had a token.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: tokio::time::Instant,
    strikes: u64,
}

impl TokenBucket {
    fn new(rate: u32) -> TokenBucket {
        let rate = f64::from(rate);
        TokenBucket {
            rate,
            tokens: rate * 2.0,
            at: tokio::time::Instant::now(),
            strikes: 0,
        }
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut outbox: mpsc::Receiver<Out>,
    conn: std::sync::Arc<Conn>,
) {
    // One close future for the connection's life: a new one per frame would register and
    // unregister a waiter for every frame sent.
    let closed = conn.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            (code, reason) = &mut closed => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame { code, reason: reason.into() })))
                    .await;
                let _ = sink.close().await;
                return;
            }
            out = outbox.recv() => {
                let Some(first) = out else { return };
                // Everything already queued goes out with one flush.
                let mut sent = sink.feed(message(first)).await;
                let mut batch = 1;
                while sent.is_ok() && batch < 64 {
                    match outbox.try_recv() {
                        Ok(next) => sent = sink.feed(message(next)).await,
                        Err(_) => break,
                    }
                    batch += 1;
                }
                if sent.is_ok() {
                    sent = sink.flush().await;
                }
                if sent.is_err() {
                    conn.close(close::DEAD_PEER, "the connection failed");
                    return;
                }
            }
        }
    }
}

fn message(out: Out) -> Message {
    match out {
        Out::Text(text) => Message::Text(text.into()),
        Out::Ping => Message::Ping(bytes::Bytes::new()),
    }
}
