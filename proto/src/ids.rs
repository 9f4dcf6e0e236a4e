//! Identifiers: users, devices and conversations.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::limits::ID_BYTES_MAX;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id was empty.
    #[error("{kind} id is empty")]
    Empty {
        /// Which kind of id.
        kind: &'static str,
    },
    /// The id was longer than [`ID_BYTES_MAX`].
    #[error("{kind} id is {length} bytes, expected at most {max}")]
    TooLong {
        /// Which kind of id.
        kind: &'static str,
        /// Its length in bytes.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// The id held a character outside `[A-Za-z0-9_.-]`.
    #[error("{kind} id has character {character:?}, expected only A-Z a-z 0-9 _ . -")]
    BadCharacter {
        /// Which kind of id.
        kind: &'static str,
        /// The first offending character.
        character: char,
    },
    /// A conversation id that is not 26 lowercase base32 characters.
    #[error("conversation id {0:?} is not 26 lowercase base32 characters")]
    BadConversation(String),
}

fn validate_name(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > ID_BYTES_MAX {
        return Err(IdError::TooLong { kind, length: value.len(), max: ID_BYTES_MAX });
    }
    if let Some(character) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(IdError::BadCharacter { kind, character });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` (1..=64 bytes of `[A-Za-z0-9_.-]`).
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_name($kind, &value)?;
                Ok(Self(value))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::new(value).map_err(de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A user, from the JWT `sub` claim: 1..=64 bytes of `[A-Za-z0-9_.-]`.
    UserId,
    "user"
);
name_id!(
    /// A device, chosen by the client in `hello` and stable per install; same shape as a user id.
    /// Device ids are only unique within one user.
    DeviceId,
    "device"
);

/// Number of characters in a conversation id's text form.
pub const CONVERSATION_ID_CHARS: usize = 26;
const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A conversation: 16 bytes, shown as 26 lowercase base32 characters (RFC 4648 alphabet,
/// no padding). In JSON it is the text form; in postcard it is the 16 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConversationId([u8; 16]);

impl ConversationId {
    /// Wraps 16 raw bytes (for example from a seeded RNG).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The deterministic id of the 1:1 conversation between `a` and `b`; the order of the two
    /// users does not matter, so creating the same direct conversation twice finds the first.
    pub fn direct(a: &UserId, b: &UserId) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let mut hasher = Sha256::new();
        hasher.update(b"natter/direct/v1\0");
        hasher.update(low.as_str().as_bytes());
        // The separator cannot occur inside an id, so distinct pairs never hash the same input.
        hasher.update(b"\0");
        hasher.update(high.as_str().as_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(bytes)
    }

    /// Parses the 26-character text form.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let bad = || IdError::BadConversation(text.chars().take(40).collect());
        let raw = text.as_bytes();
        if raw.len() != CONVERSATION_ID_CHARS {
            return Err(bad());
        }
        let mut bits: u32 = 0;
        let mut bit_count = 0u32;
        let mut bytes = [0u8; 16];
        let mut written = 0;
        for &character in raw {
            let value = BASE32_ALPHABET.iter().position(|&a| a == character).ok_or_else(bad)?;
            bits = (bits << 5) | value as u32;
            bit_count += 5;
            if bit_count >= 8 {
                bit_count -= 8;
                if written == 16 {
                    return Err(bad());
                }
                bytes[written] = (bits >> bit_count) as u8;
                written += 1;
                bits &= (1 << bit_count) - 1;
            }
        }
        // 26 characters carry 130 bits; the 2 left over must be zero so every id has exactly
        // one text form.
        if written != 16 || bits != 0 {
            return Err(bad());
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; CONVERSATION_ID_CHARS];
        let mut bits: u32 = 0;
        let mut bit_count = 0u32;
        let mut index = 0;
        for &byte in &self.0 {
            bits = (bits << 8) | byte as u32;
            bit_count += 8;
            while bit_count >= 5 {
                bit_count -= 5;
                text[index] = BASE32_ALPHABET[((bits >> bit_count) & 31) as usize];
                index += 1;
            }
            bits &= (1 << bit_count) - 1;
        }
        text[index] = BASE32_ALPHABET[((bits << (5 - bit_count)) & 31) as usize];
        debug_assert_eq!(index + 1, CONVERSATION_ID_CHARS);
        f.write_str(std::str::from_utf8(&text).expect("base32 alphabet is ascii"))
    }
}

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversationId({self})")
    }
}

impl FromStr for ConversationId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl Serialize for ConversationId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ConversationId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            struct TextVisitor;
            impl Visitor<'_> for TextVisitor {
                type Value = ConversationId;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a 26-character lowercase base32 conversation id")
                }
                fn visit_str<E: de::Error>(self, value: &str) -> Result<ConversationId, E> {
                    ConversationId::parse(value).map_err(E::custom)
                }
            }
            deserializer.deserialize_str(TextVisitor)
        } else {
            <[u8; 16]>::deserialize(deserializer).map(Self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::new("alice.b-c_9").is_ok());
        assert_eq!(UserId::new(""), Err(IdError::Empty { kind: "user" }));
        assert!(matches!(UserId::new("a".repeat(65)), Err(IdError::TooLong { length: 65, .. })));
        assert!(matches!(DeviceId::new("phone 1"), Err(IdError::BadCharacter { character: ' ', .. })));
        assert!(matches!(UserId::new("é"), Err(IdError::BadCharacter { .. })));
    }

    #[test]
    fn conversation_id_text_round_trips() {
        for bytes in [[0u8; 16], [255u8; 16], *b"0123456789abcdef"] {
            let id = ConversationId::from_bytes(bytes);
            let text = id.to_string();
            assert_eq!(text.len(), CONVERSATION_ID_CHARS);
            assert!(text.bytes().all(|c| BASE32_ALPHABET.contains(&c)));
            assert_eq!(ConversationId::parse(&text), Ok(id));
        }
        assert_eq!(ConversationId::from_bytes([0u8; 16]).to_string(), "a".repeat(26));
    }

    #[test]
    fn conversation_id_rejects_non_canonical_text() {
        // The last character carries 2 padding bits; a set padding bit is not a valid id.
        let mut text = ConversationId::from_bytes([0u8; 16]).to_string();
        text.replace_range(25..26, "b");
        assert!(ConversationId::parse(&text).is_err());
        assert!(ConversationId::parse("AAAAAAAAAAAAAAAAAAAAAAAAAA").is_err());
        assert!(ConversationId::parse("short").is_err());
        assert!(ConversationId::parse(&"a".repeat(27)).is_err());
    }

    #[test]
    fn direct_id_ignores_order_and_separates_pairs() {
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        let carol = UserId::new("carol").unwrap();
        assert_eq!(ConversationId::direct(&alice, &bob), ConversationId::direct(&bob, &alice));
        assert_ne!(ConversationId::direct(&alice, &bob), ConversationId::direct(&alice, &carol));
        // "ab"+"c" must not collide with "a"+"bc".
        let ab = UserId::new("ab").unwrap();
        let c = UserId::new("c").unwrap();
        let a = UserId::new("a").unwrap();
        let bc = UserId::new("bc").unwrap();
        assert_ne!(ConversationId::direct(&ab, &c), ConversationId::direct(&a, &bc));
    }
}
