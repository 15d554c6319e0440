//! API tokens: their scopes, how they are made and hashed, and the in-memory set the
//! checks read (loaded from the `tokens` table).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Read devices, twins, properties, endpoints and live values; subscribe to streams.
    Read,
    /// Change twins' desired state.
    WriteDesired,
    /// Write inputs, call and run resources, set properties, call endpoints.
    Control,
    /// Everything, including the registry, tokens, gateways and endpoint definitions.
    Admin,
}

impl Scope {
    /// Parses the config / API spelling.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// Hex SHA-256.
pub fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token with `prefix` (`tl_` for API tokens, `tlg_` for gateways).
pub fn new_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The known API tokens, by hash, in memory (loaded from the `tokens` table).
#[derive(Debug, Default, Clone)]
pub struct Tokens(Arc<RwLock<HashMap<String, TokenRecord>>>);

impl Tokens {
    pub fn insert(&self, sha: String, rec: TokenRecord) {
        if let Ok(mut t) = self.0.write() {
            t.insert(sha, rec);
        }
    }
    pub fn remove_named(&self, name: &str) -> Vec<String> {
        let Ok(mut t) = self.0.write() else { return Vec::new() };
        let shas: Vec<String> = t
            .iter()
            .filter(|(_, r)| r.name == name)
            .map(|(k, _)| k.clone())
            .collect();
        for s in &shas {
            t.remove(s);
        }
        shas
    }
    pub fn lookup(&self, token: &str) -> Option<TokenRecord> {
        self.0.read().ok()?.get(&sha256_hex(token)).cloned()
    }
    pub fn is_empty(&self) -> bool {
        self.0.read().map(|t| t.is_empty()).unwrap_or(true)
    }
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut v: Vec<TokenRecord> = self.0.read().map(|t| t.values().cloned().collect()).unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// An API token (the token itself is only ever hashed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created: u64,
    /// The one user whose devices the token sees; none: a platform token (every user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}
