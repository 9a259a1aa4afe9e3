//! Room names: what a room is (a booking's chat, a support conversation,
//! a user's own channel) is told by its name, parsed once here.

use std::fmt;

/// A name that is not `booking:<id>`, `support:<id>` or `user:<id>`.
#[derive(Debug, thiserror::Error)]
#[error("invalid room `{0}`: expected booking:<id>, support:<id> or user:<id>")]
pub struct RoomNameError(String);

/// A validated room name: `booking:<id>`, `support:<id>` or `user:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomName {
    full: String,
    kind: RoomKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKind {
    Booking,
    Support,
    User,
}

impl RoomName {
    pub fn parse(raw: &str) -> Result<Self, RoomNameError> {
        let invalid = || RoomNameError(raw.chars().take(80).collect());
        let (prefix, id) = raw.split_once(':').ok_or_else(invalid)?;
        let kind = match prefix {
            "booking" => RoomKind::Booking,
            "support" => RoomKind::Support,
            "user" => RoomKind::User,
            _ => return Err(invalid()),
        };
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(invalid());
        }
        Ok(RoomName {
            full: raw.to_owned(),
            kind,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn kind(&self) -> RoomKind {
        self.kind
    }

    /// The id after the prefix.
    pub fn id(&self) -> &str {
        self.full.split_once(':').map_or("", |(_, id)| id)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_room_names() {
        let room = RoomName::parse("booking:9f1c-aa_2").unwrap();
        assert_eq!(room.kind(), RoomKind::Booking);
        assert_eq!(room.id(), "9f1c-aa_2");
        for bad in ["nonsense", "booking:", "team:1", "booking:a b", "user:../x"] {
            assert!(RoomName::parse(bad).is_err(), "{bad}");
        }
        assert!(RoomName::parse(&format!("booking:{}", "a".repeat(65))).is_err());
    }
}
