//! The JSON frames of section 9, client → server parsed strictly, server → client written
//! by hand where a frame goes to many subscribers (the document text is already JSON).

use serde::Deserialize;
use serde_json::{Value, json};

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    Auth {
        token: Option<String>,
    },
    Subscribe {
        id: String,
        collection: String,
        #[serde(default, rename = "where")]
        filter: Option<Value>,
        #[serde(default)]
        doc_id: Option<String>,
        #[serde(default)]
        snapshot: bool,
        #[serde(default)]
        resume_from: Option<SeqText>,
    },
    Unsubscribe {
        id: String,
    },
    Join {
        channel: String,
        #[serde(default)]
        presence: Option<Value>,
    },
    Leave {
        channel: String,
    },
    Broadcast {
        channel: String,
        #[serde(default)]
        payload: Value,
    },
    Ping {},
}

/// A seq as the client sends it back: the string the server sent, or a number.
#[derive(Debug, Clone, Copy)]
pub struct SeqText(pub i64);

impl<'de> Deserialize<'de> for SeqText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let seq = match Raw::deserialize(d)? {
            Raw::Number(n) => n,
            Raw::Text(t) => t
                .parse()
                .map_err(|_| serde::de::Error::custom("a seq is a decimal number"))?,
        };
        if seq < 0 {
            return Err(serde::de::Error::custom("a seq is never negative"));
        }
        Ok(SeqText(seq))
    }
}

/// `{"type":"error",…}`; `id` names the subscription (or channel) it is about.
pub fn error(id: Option<&str>, code: &str, message: &str) -> String {
    let mut frame = json!({"type": "error", "code": code, "message": message});
    if let Some(id) = id {
        frame["id"] = json!(id);
    }
    frame.to_string()
}

pub fn subscribed(id: &str, seq: i64) -> String {
    json!({"type": "subscribed", "id": id, "seq": seq.to_string()}).to_string()
}

pub fn unsubscribed(id: &str) -> String {
    json!({"type": "unsubscribed", "id": id}).to_string()
}

pub fn snapshot(id: &str, items: &[String], next_cursor: &Option<String>) -> String {
    use crate::documents::{push_json, push_json_array};
    let mut out = String::with_capacity(64 + items.iter().map(|i| i.len() + 1).sum::<usize>());
    out.push_str("{\"type\":\"snapshot\",\"id\":");
    push_json(&mut out, id);
    out.push_str(",\"items\":");
    push_json_array(&mut out, items);
    out.push_str(",\"next_cursor\":");
    push_json(&mut out, next_cursor);
    out.push('}');
    out
}

/// An event; `id_json` is the subscription id as JSON text and `doc` the document as JSON
/// text (the change log's form), so a fan-out copies strings instead of serializing.
pub fn event(id_json: &str, op: &str, doc: &str, seq: i64) -> String {
    let mut out = String::with_capacity(doc.len() + id_json.len() + 64);
    out.push_str(r#"{"type":"event","id":"#);
    out.push_str(id_json);
    out.push_str(r#","op":""#);
    out.push_str(op);
    out.push_str(r#"","doc":"#);
    out.push_str(doc);
    out.push_str(r#","seq":""#);
    out.push_str(&seq.to_string());
    out.push_str(r#""}"#);
    out
}

pub fn pong() -> String {
    r#"{"type":"pong"}"#.to_owned()
}

pub fn authed(user_id: Option<&str>, role: &str, expires_at: Option<i64>) -> String {
    json!({"type": "authed", "user_id": user_id, "role": role, "expires_at": expires_at})
        .to_string()
}

pub fn presence(channel: &str, joins: &[Value], leaves: &[Value]) -> String {
    json!({"type": "presence", "channel": channel, "joins": joins, "leaves": leaves}).to_string()
}

pub fn joined(channel: &str, key: &str) -> String {
    json!({"type": "joined", "channel": channel, "key": key}).to_string()
}

pub fn left(channel: &str) -> String {
    json!({"type": "left", "channel": channel}).to_string()
}

pub fn broadcast(channel: &str, from: &Value, payload: &Value) -> String {
    json!({"type": "broadcast", "channel": channel, "from": from, "payload": payload}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_json() {
        let frame = event(r#""s\"1""#, "update", r#"{"_id":"a","n":1}"#, 42);
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["id"], "s\"1");
        assert_eq!(v["doc"]["n"], 1);
        assert_eq!(v["seq"], "42");
    }

    #[test]
    fn client_frames_are_strict() {
        let ok: ClientMsg = serde_json::from_str(
            r#"{"type":"subscribe","id":"a","collection":"c","resume_from":"7"}"#,
        )
        .unwrap();
        assert!(matches!(
            ok,
            ClientMsg::Subscribe {
                resume_from: Some(SeqText(7)),
                ..
            }
        ));
        assert!(serde_json::from_str::<ClientMsg>(r#"{"type":"subscribe","id":"a"}"#).is_err());
        assert!(serde_json::from_str::<ClientMsg>(r#"{"type":"ping","x":1}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMsg>(
                r#"{"type":"subscribe","id":"a","collection":"c","resume_from":-1}"#
            )
            .is_err()
        );
    }
}
