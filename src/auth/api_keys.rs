//! API keys: the config holds only each key's SHA-256; a presented key is
//! hashed and compared in constant time against every configured hash.

use aws_lc_rs::{constant_time, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use super::{AuthError, Credentials};
use crate::config::ApiKeyConfig;
use crate::invocation::Principal;

/// The prefix of keys made by `fngate keygen`, so a leaked key is easy to
/// recognise in a scanner.
const PREFIX: &str = "fgk_";

/// Random bytes in a new key.
const KEY_BYTES: usize = 32;

pub(super) struct ApiKeys {
    keys: Vec<ApiKeyConfig>,
}

impl ApiKeys {
    pub(super) fn new(keys: &[ApiKeyConfig]) -> ApiKeys {
        ApiKeys {
            keys: keys.to_vec(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn verify(&self, presented: &str) -> Result<Credentials, AuthError> {
        let hash = digest::digest(&digest::SHA256, presented.as_bytes());
        // Every configured hash is compared, whichever matches: the time
        // taken says nothing about which key (if any) it was.
        let mut matched = None;
        for key in &self.keys {
            let equal = constant_time::verify_slices_are_equal(hash.as_ref(), &key.sha256).is_ok();
            if equal && matched.is_none() {
                matched = Some(key);
            }
        }
        let key = matched.ok_or_else(|| AuthError::invalid("unknown API key"))?;
        Ok(Credentials {
            principal: Principal {
                subject: key.name.clone(),
                issuer: None,
            },
            scopes: key.scopes.clone(),
        })
    }
}

/// A new random API key (32 random bytes, URL-safe base64, prefixed `fgk_`)
/// and the lowercase hex SHA-256 of it, for `fngate keygen`.
pub fn new_api_key() -> (String, String) {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = digest::digest(&digest::SHA256, key.as_bytes());
    (key, hex(hash.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}
