//! Bearer tokens: admin tokens (made by `metalcastd token create`) and per-boot node tokens.
//!
//! A token is 32 random bytes from the operating system, written as 64 lowercase hex digits.
//! Only its BLAKE3 hash is stored. A slow password hash (argon2) protects low-entropy secrets
//! against guessing; these tokens have 256 bits of entropy, so guessing is hopeless and a fast
//! hash loses nothing while keeping every authenticated request cheap.

use std::fmt;

/// Length of a token in bytes before hex encoding.
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomError(#[source] getrandom::Error);

/// A token in clear text. It exists only between creation and the moment it is shown or
/// sent; the `Debug` form hides it so it never ends up in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh random token.
    pub fn generate() -> Result<Token, RandomError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(RandomError)?;
        let mut hex = String::with_capacity(TOKEN_BYTES * 2);
        for b in bytes {
            hex.push_str(&format!("{b:02x}"));
        }
        Ok(Token(hex))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// The stored form of a token: the BLAKE3 hash of its text.
#[derive(Clone, Copy, Debug)]
pub struct TokenHash(blake3::Hash);

impl TokenHash {
    /// Hash whatever a client presented; it need not be a well-formed token.
    pub fn of(presented: &str) -> TokenHash {
        TokenHash(blake3::hash(presented.as_bytes()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// `None` when the stored value does not have the length of a hash.
    pub fn from_slice(bytes: &[u8]) -> Option<TokenHash> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(TokenHash(blake3::Hash::from_bytes(arr)))
    }
}

/// Constant time: `blake3::Hash`'s equality does not stop at the first differing byte.
impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for TokenHash {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_hex_digits_and_differ() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_eq!(a.as_str().len(), 64);
        assert!(
            a.as_str()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn hash_matches_only_the_same_text() {
        let a = Token::generate().unwrap();
        assert_eq!(a.hash(), TokenHash::of(a.as_str()));
        assert_ne!(a.hash(), TokenHash::of(&a.as_str().to_uppercase()));
        let stored = a.hash().as_bytes().to_vec();
        assert_eq!(TokenHash::from_slice(&stored), Some(a.hash()));
        assert_eq!(TokenHash::from_slice(&stored[..31]), None);
    }

    #[test]
    fn debug_hides_the_secret() {
        let a = Token::generate().unwrap();
        assert!(!format!("{a:?}").contains(a.as_str()));
    }
}
