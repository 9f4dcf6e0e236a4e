//! Client authentication: HS256 JWTs whose `sub` is the user id (DESIGN §5).
//!
//! Tokens are checked against the cluster's shared secret with the caller's clock (`now` comes
//! from `NodeEnv`, so the simulator decides when a token expires).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use natter_proto::UserId;
use serde::{Deserialize, Serialize};

/// Shortest secret accepted, in bytes: HS256 keys shorter than the hash are weak.
pub const SECRET_BYTES_MIN: usize = 32;
/// Longest token accepted, in bytes (a token arrives before anything is trusted).
pub const TOKEN_BYTES_MAX: usize = 4096;

/// The claims natter reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused. Every variant is answered with the wire code `unauthenticated`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no token presented")]
    Missing,
    /// The token is over [`TOKEN_BYTES_MAX`].
    #[error("token of {0} bytes, expected at most {TOKEN_BYTES_MAX}")]
    TooLong(usize),
    /// The token is not a well-formed HS256 JWT signed with the cluster secret.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `exp` has passed.
    #[error("token expired at {exp}, now is {now}")]
    Expired {
        /// Expiry, seconds since the epoch.
        exp: u64,
        /// The verifier's clock, seconds since the epoch.
        now: u64,
    },
    /// `sub` is not a valid user id.
    #[error("token subject is not a valid user id: {0}")]
    BadSubject(String),
}

/// Why a secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jwt secret of {0} bytes, expected at least {SECRET_BYTES_MIN}")]
pub struct WeakSecret(pub usize);

/// Signs and checks client tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from the cluster secret.
    pub fn new(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(WeakSecret(secret.len()));
        }
        Ok(Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) })
    }

    /// A token for `user` valid until `now_seconds + ttl_seconds`.
    pub fn issue(&self, user: &UserId, now_seconds: u64, ttl_seconds: u64) -> String {
        let claims = Claims { sub: user.as_str().to_owned(), exp: now_seconds.saturating_add(ttl_seconds) };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of small claims cannot fail")
    }

    /// The user a token names, if it is signed with this key and unexpired at `now_seconds`.
    pub fn verify(&self, token: &str, now_seconds: u64) -> Result<UserId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::TooLong(token.len()));
        }
        // Only HS256, and expiry checked below against our clock rather than the OS's.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp", "sub"].into_iter().map(String::from).collect();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|error| AuthError::Invalid(error.to_string()))?;
        let claims = data.claims;
        if claims.exp <= now_seconds {
            return Err(AuthError::Expired { exp: claims.exp, now: now_seconds });
        }
        UserId::new(claims.sub).map_err(|error| AuthError::BadSubject(error.to_string()))
    }
}

/// Name of the file `--dev` keeps its secret in, inside the data dir.
pub const DEV_SECRET_FILE: &str = "jwt-secret";

/// Reads the secret kept at `path`, or creates one (32 random bytes as 64 hex characters, file
/// mode 0600) if the file does not exist.
pub fn load_or_create_secret(path: &std::path::Path, rng: &mut impl rand::RngCore) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        Err(_) => {}
    }
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(secret)
}

/// A token lifetime that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    /// No number where the duration should start.
    #[error("expected a duration like 24h, got {0:?}")]
    NotADuration(String),
    /// A unit other than s, m, h or d.
    #[error("unknown duration unit {unit:?} in {text:?}, expected s, m, h or d")]
    UnknownUnit {
        /// The unit given.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// Zero, or more seconds than a `u64` holds.
    #[error("duration {0:?} out of range")]
    OutOfRange(String),
}

/// Parses a duration like `90s`, `15m`, `24h`, `7d` (or plain seconds) into seconds.
pub fn parse_ttl(text: &str) -> Result<u64, TtlError> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: u64 = number.parse().map_err(|_| TtlError::NotADuration(text.to_owned()))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(TtlError::UnknownUnit { unit: other.to_owned(), text: text.to_owned() }),
    };
    value.checked_mul(scale).filter(|&seconds| seconds > 0).ok_or_else(|| TtlError::OutOfRange(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn alice() -> UserId {
        UserId::new("alice").unwrap()
    }

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let key = TokenKey::new(SECRET).unwrap();
        let token = key.issue(&alice(), 1_000, 60);
        assert_eq!(key.verify(&token, 1_000), Ok(alice()));
        assert_eq!(key.verify(&token, 1_059), Ok(alice()));
        assert_eq!(key.verify(&token, 1_060), Err(AuthError::Expired { exp: 1_060, now: 1_060 }));
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let key = TokenKey::new(SECRET).unwrap();
        let other = TokenKey::new(b"another secret that is long enough!!").unwrap();
        let forged = other.issue(&alice(), 1_000, 60);
        assert!(matches!(key.verify(&forged, 1_000), Err(AuthError::Invalid(_))));
        assert!(matches!(key.verify("not.a.token", 1_000), Err(AuthError::Invalid(_))));
        assert_eq!(key.verify("", 1_000), Err(AuthError::Missing));
        assert!(matches!(key.verify(&"x".repeat(5000), 1_000), Err(AuthError::TooLong(5000))));
        // alg=none is refused: take a valid token and strip its signature.
        let token = key.issue(&alice(), 1_000, 60);
        let unsigned = format!("{}.", &token[..token.rfind('.').unwrap()]);
        assert!(matches!(key.verify(&unsigned, 1_000), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn a_subject_that_is_not_a_user_id_is_refused() {
        let key = TokenKey::new(SECRET).unwrap();
        let claims = Claims { sub: "bad user!".into(), exp: 2_000 };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key.encoding).unwrap();
        assert!(matches!(key.verify(&token, 1_000), Err(AuthError::BadSubject(_))));
    }

    #[test]
    fn weak_secrets_are_refused() {
        assert_eq!(TokenKey::new(b"short").unwrap_err(), WeakSecret(5));
    }

    #[test]
    fn a_dev_secret_is_created_once_and_kept() {
        use rand::SeedableRng;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEV_SECRET_FILE);
        let first = load_or_create_secret(&path, &mut rand::rngs::StdRng::seed_from_u64(1)).unwrap();
        let second = load_or_create_secret(&path, &mut rand::rngs::StdRng::seed_from_u64(2)).unwrap();
        assert_eq!(first, second, "an existing secret is never replaced");
        assert_eq!(first.len(), 64);
        assert!(TokenKey::new(first.as_bytes()).is_ok());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("24h"), Ok(86_400));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("3w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
