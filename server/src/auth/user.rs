//! The user as the API shows it, and the checks on what users may set.

use serde_json::{Map, Value, json};

use super::Error;
use crate::store::auth::UserRow;

/// A user account.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub anonymous: bool,
    pub role: String,
    pub claims: Map<String, Value>,
    pub data: Map<String, Value>,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

fn object(text: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

impl User {
    pub fn from_row(row: &UserRow) -> User {
        User {
            id: row.id.clone(),
            email: row.email.clone(),
            email_verified: row.email_verified,
            anonymous: row.anonymous,
            role: row.role.clone(),
            claims: object(&row.claims),
            data: object(&row.data),
            disabled: row.disabled,
            created_at: row.created_at.clone(),
            updated_at: row.updated_at.clone(),
        }
    }

    /// `{id, email, email_verified, anonymous, role, data, created_at}` — what the user sees.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "email": self.email,
            "email_verified": self.email_verified,
            "anonymous": self.anonymous,
            "role": self.role,
            "data": self.data,
            "created_at": self.created_at,
        })
    }

    /// What an admin sees: also custom claims, disabled, updated_at.
    pub fn to_admin_json(&self) -> Value {
        let mut v = self.to_json();
        if let Value::Object(map) = &mut v {
            map.insert("claims".into(), Value::Object(self.claims.clone()));
            map.insert("disabled".into(), Value::Bool(self.disabled));
            map.insert("updated_at".into(), Value::String(self.updated_at.clone()));
        }
        v
    }
}

/// Trims and lower-cases an email address and checks its shape.
pub fn normalize_email(raw: &str) -> Result<String, Error> {
    let email = raw.trim().to_lowercase();
    let invalid = || Error::validation("email", "this is not a valid email address");
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    if local.is_empty()
        || local.len() > 64
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err(invalid());
    }
    Ok(email)
}

/// A role: 1-64 of `a-z 0-9 _ -`.
pub fn check_role(role: &str) -> Result<(), Error> {
    let ok = !role.is_empty()
        && role.len() <= 64
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::validation(
            "role",
            "roles are 1-64 of a-z, 0-9, `_` and `-`",
        ))
    }
}

/// User `data` and admin `claims`: a JSON object with valid field names, at most `max` bytes.
pub fn check_object(
    field: &'static str,
    value: &Value,
    max: usize,
) -> Result<Map<String, Value>, Error> {
    let Value::Object(map) = value else {
        return Err(Error::validation(
            field,
            format!("`{field}` must be a JSON object"),
        ));
    };
    crate::documents::validate::validate_data(map)
        .map_err(|e| Error::validation(field, e.to_string()))?;
    if serde_json::to_string(map)
        .map(|s| s.len())
        .unwrap_or(usize::MAX)
        > max
    {
        return Err(Error::validation(
            field,
            format!("`{field}` is larger than {max} bytes"),
        ));
    }
    Ok(map.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "",
            "a",
            "a@b",
            "@b.c",
            "a@.b",
            "a@b.",
            "a b@c.d",
            "a@@b.c",
            "a@b..c",
            &format!("{}@b.c", "x".repeat(65)),
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_and_objects_are_checked() {
        assert!(check_role("editor").is_ok());
        assert!(check_role("Admin").is_err());
        assert!(check_role("").is_err());
        assert!(check_object("data", &json!({"a": 1}), 100).is_ok());
        assert!(check_object("data", &json!([1]), 100).is_err());
        assert!(check_object("data", &json!({"_x": 1}), 100).is_err());
        assert!(check_object("data", &json!({"a": "x".repeat(200)}), 100).is_err());
    }
}
