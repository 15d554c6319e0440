//! The device registry: who may connect, with credentials stored only as salted hashes.
//!
//! A credential is kept as `pbkdf2-sha256$<iterations>$<salt>$<hash>` (base64 without
//! padding), made by `twinlake hash-credential`. Checking one costs the iterations, so a
//! credential that checked out is remembered as a SHA-256 digest for the life of the process:
//! a reconnect storm after a network blip costs one hash each, not one PBKDF2.
//!
//! Failed attempts are counted per client address; past `max_failures` within the window,
//! the address is refused without a check until its lockout ends ([`crate::rate_limit::RateLimiter`]).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Mutex, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::{digest, pbkdf2};

use crate::event::DeviceKey;
use crate::hex::constant_time_eq;
use crate::listener::Authenticator;
use crate::listener::session::Credentials;

/// PBKDF2 iterations for credentials a person chose (OWASP's current advice for
/// PBKDF2-HMAC-SHA256). Credentials the platform makes (128 random bits or more) take a
/// salted HMAC instead ([`CredentialHash::fast`]): nothing is left to guess slowly.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
const ALG: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;
const PREFIX: &str = "pbkdf2-sha256";
const FAST_PREFIX: &str = "hmac-sha256";

/// A parsed credential hash: PBKDF2 (`iterations`), or a salted HMAC (`None`).
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialHash {
    iterations: Option<NonZeroU32>,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl std::fmt::Debug for CredentialHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialHash")
            .field("iterations", &self.iterations.map_or(0, NonZeroU32::get))
            .finish_non_exhaustive()
    }
}

impl CredentialHash {
    /// Hashes a credential with PBKDF2 and a fresh random salt.
    pub fn new(credential: &str, iterations: u32) -> Self {
        let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        let salt = new_salt(credential);
        let mut hash = vec![0u8; 32];
        pbkdf2::derive(ALG, iterations, &salt, credential.as_bytes(), &mut hash);
        Self {
            iterations: Some(iterations),
            salt,
            hash,
        }
    }

    /// A salted HMAC-SHA256 of a credential the platform made (128 random bits or more):
    /// as safe as PBKDF2 there, and a reconnect storm costs nothing.
    pub fn fast(credential: &str) -> Self {
        let salt = new_salt(credential);
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salt),
            credential.as_bytes(),
        );
        Self {
            iterations: None,
            salt,
            hash: tag.as_ref().to_vec(),
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "a credential hash looks like {PREFIX}$<iterations>$<salt>$<hash> or {FAST_PREFIX}$<salt>$<hash> (make one with `twinlake hash-credential`)"
            )
        };
        let parts: Vec<&str> = s.split('$').collect();
        let (iterations, salt, hash) = match parts.as_slice() {
            [PREFIX, iter, salt, hash] => {
                let n = iter
                    .parse::<u32>()
                    .ok()
                    .and_then(NonZeroU32::new)
                    .ok_or_else(|| format!("bad iteration count {iter:?}"))?;
                (Some(n), *salt, *hash)
            }
            [FAST_PREFIX, salt, hash] => (None, *salt, *hash),
            _ => return Err(bad()),
        };
        let salt = B64.decode(salt).map_err(|e| format!("bad salt: {e}"))?;
        let hash = B64.decode(hash).map_err(|e| format!("bad hash: {e}"))?;
        if salt.len() < 8 || hash.len() < 16 {
            return Err("salt or hash too short".into());
        }
        Ok(Self { iterations, salt, hash })
    }

    /// The PBKDF2 iterations, or `None` for a salted HMAC.
    pub fn iterations(&self) -> Option<u32> {
        self.iterations.map(NonZeroU32::get)
    }

    /// Whether this is a PBKDF2 hash weaker than `iterations` (a salted HMAC never is: it
    /// is kept for credentials the platform made).
    pub fn weaker_than(&self, iterations: u32) -> bool {
        self.iterations.is_some_and(|n| n.get() < iterations)
    }

    /// Whether `credential` matches, in constant time.
    pub fn verify(&self, credential: &str) -> bool {
        match self.iterations {
            Some(n) => pbkdf2::verify(ALG, n, &self.salt, credential.as_bytes(), &self.hash).is_ok(),
            None => ring::hmac::verify(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.salt),
                credential.as_bytes(),
                &self.hash,
            )
            .is_ok(),
        }
    }
}

/// 16 random bytes (a hash of the time and the credential if the OS has no entropy).
fn new_salt(credential: &str) -> Vec<u8> {
    let mut salt = vec![0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        salt = digest::digest(&digest::SHA256, format!("{now:?}{credential}").as_bytes())
            .as_ref()
            .iter()
            .take(16)
            .copied()
            .collect();
    }
    salt
}

impl std::fmt::Display for CredentialHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.iterations {
            Some(n) => write!(f, "{PREFIX}${n}${}${}", B64.encode(&self.salt), B64.encode(&self.hash)),
            None => write!(f, "{FAST_PREFIX}${}${}", B64.encode(&self.salt), B64.encode(&self.hash)),
        }
    }
}

/// The devices that may connect: the configured ones, plus the ones the cloud syncs.
#[derive(Debug, Default)]
pub struct DeviceRegistry {
    devices: RwLock<HashMap<DeviceKey, Known>>,
    /// The devices the cloud manages (the last full sync).
    from_cloud: Mutex<HashSet<DeviceKey>>,
    /// The cloud's PBKDF2 iterations: a cloud-managed device whose hash is weaker is
    /// rehashed at its next successful login.
    policy: Mutex<Option<u32>>,
    /// Rehashed credentials the cloud's registry does not show yet, and whether each was
    /// sent.
    upgrades: Mutex<HashMap<DeviceKey, (Upgrade, bool)>>,
}

/// A device the registry knows: its credential's hash, and the SHA-256 of the credential
/// that last checked out against it (a later login with the same credential skips the
/// slow check). Kept together so the device's key is held once (BENCHMARKS.md: agent memory
/// per idle device).
#[derive(Debug)]
struct Known {
    hash: CredentialHash,
    verified: Option<[u8; 32]>,
}

impl Known {
    fn new(hash: CredentialHash) -> Self {
        Self { hash, verified: None }
    }
}

/// A credential hash made stronger at a login: the hash it replaces and the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub key: DeviceKey,
    pub old: String,
    pub new: String,
}

/// Rehashed credentials waiting for the cloud, at most; past it a weak hash waits for a
/// later login.
const MAX_UPGRADES: usize = 10_000;

impl DeviceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a device.
    pub fn insert(&self, user: &str, device: &str, hash: CredentialHash) {
        let key = DeviceKey::new(user, device);
        if let Ok(mut d) = self.devices.write() {
            d.insert(key, Known::new(hash));
        }
    }

    /// Adds a device with a plaintext credential (hashed here): tests and the demo.
    pub fn with(self, user: &str, device: &str, credential: &str) -> Self {
        self.insert(user, device, CredentialHash::new(credential, 1_000));
        self
    }

    /// Replaces the devices the cloud manages with `entries`. Returns the devices that were
    /// removed or whose credential changed (their connections should close).
    pub fn sync_cloud(&self, entries: Vec<(DeviceKey, CredentialHash)>) -> Vec<DeviceKey> {
        let (Ok(mut devices), Ok(mut cloud), Ok(mut upgrades)) =
            (self.devices.write(), self.from_cloud.lock(), self.upgrades.lock())
        else {
            return Vec::new();
        };
        let next: HashSet<DeviceKey> = entries.iter().map(|(k, _)| k.clone()).collect();
        let mut changed = Vec::new();
        for gone in cloud.difference(&next) {
            devices.remove(gone);
            upgrades.remove(gone);
            changed.push(gone.clone());
        }
        for (key, hash) in entries {
            // The cloud's record still holds the hash this gateway replaced at a login: the
            // new one stays until the cloud has it.
            if let Some((up, _)) = upgrades.get(&key) {
                let cloud_hash = hash.to_string();
                if cloud_hash == up.old {
                    continue;
                }
                upgrades.remove(&key);
            }
            match devices.get(&key) {
                // Unchanged: what checked out still does.
                Some(old) if old.hash == hash => {}
                Some(_) => {
                    changed.push(key.clone());
                    devices.insert(key, Known::new(hash));
                }
                None => {
                    devices.insert(key, Known::new(hash));
                }
            }
        }
        *cloud = next;
        changed
    }

    /// Sets the cloud's PBKDF2 iterations (none: never rehash).
    pub fn set_policy(&self, iterations: Option<u32>) {
        if let Ok(mut p) = self.policy.lock() {
            *p = iterations;
        }
    }

    /// Whether rehashed credentials wait to be sent to the cloud.
    pub fn has_upgrades(&self) -> bool {
        self.upgrades.lock().is_ok_and(|u| u.values().any(|(_, sent)| !sent))
    }

    /// Takes up to `max` rehashed credentials the cloud has not been sent. They are kept
    /// (as sent) until the cloud's registry shows the new hash or another one.
    pub fn take_upgrades(&self, max: usize) -> Vec<Upgrade> {
        let Ok(mut u) = self.upgrades.lock() else {
            return Vec::new();
        };
        u.values_mut()
            .filter(|(_, sent)| !sent)
            .take(max)
            .map(|(up, sent)| {
                *sent = true;
                up.clone()
            })
            .collect()
    }

    /// After a successful full check: a cloud-managed device's hash weaker than the cloud's
    /// policy is replaced by a new one, here at once and in the cloud through the link.
    fn rehash_if_weak(&self, key: &DeviceKey, hash: &CredentialHash, credential: &str) {
        let Some(target) = self.policy.lock().ok().and_then(|p| *p) else {
            return;
        };
        let managed = self.from_cloud.lock().is_ok_and(|c| c.contains(key));
        let room = self
            .upgrades
            .lock()
            .is_ok_and(|u| u.len() < MAX_UPGRADES && !u.contains_key(key));
        if !managed || !room || !hash.weaker_than(target) {
            return;
        }
        let new = CredentialHash::new(credential, target);
        let upgrade = Upgrade {
            key: key.clone(),
            old: hash.to_string(),
            new: new.to_string(),
        };
        if let (Ok(mut d), Ok(mut u)) = (self.devices.write(), self.upgrades.lock()) {
            // The same credential: what checked out still does.
            if let Some(k) = d.get_mut(key) {
                k.hash = new;
            }
            u.insert(key.clone(), (upgrade, false));
        }
    }

    /// How many devices are registered.
    pub fn len(&self) -> usize {
        self.devices.read().map(|d| d.len()).unwrap_or_default()
    }

    /// Whether no device is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DeviceRegistry {
    /// Whether `seen` (a credential's digest) is the one that last checked out for `key`.
    /// A different credential still gets the full check.
    fn remembered(&self, key: &DeviceKey, seen: &digest::Digest) -> bool {
        self.devices
            .read()
            .ok()
            .and_then(|d| {
                d.get(key)?
                    .verified
                    .map(|known| constant_time_eq(&known, seen.as_ref()))
            })
            .unwrap_or(false)
    }
}

impl Authenticator for DeviceRegistry {
    fn quick_check(&self, c: &Credentials) -> Option<bool> {
        let key = DeviceKey::new(&c.user, &c.device);
        // An unknown device goes the full way, as a wrong credential does: answering it
        // quicker would tell an attacker which devices exist.
        let seen = digest::digest(&digest::SHA256, c.credential.as_bytes());
        self.remembered(&key, &seen).then_some(true)
    }

    fn authenticate(&self, c: &Credentials) -> bool {
        let key = DeviceKey::new(&c.user, &c.device);
        let (hash, like) = match self.devices.read() {
            Ok(d) => (
                d.get(&key).map(|k| k.hash.clone()),
                d.values().next().map(|k| k.hash.clone()),
            ),
            Err(_) => (None, None),
        };
        let Some(hash) = hash else {
            // The same work as a real check: against another device's hash (same kind and
            // cost as the fleet's), whose answer is ignored.
            let _ = like.as_ref().unwrap_or(&UNKNOWN_DEVICE).verify(&c.credential);
            return false;
        };
        let seen = digest::digest(&digest::SHA256, c.credential.as_bytes());
        if self.remembered(&key, &seen) {
            return true;
        }
        let ok = hash.verify(&c.credential);
        if ok {
            // Remembered only against the hash it was checked with (a sync may have
            // replaced it meanwhile); a rehash below keeps it, the credential being the same.
            if let (Ok(mut d), Ok(bytes)) = (self.devices.write(), <[u8; 32]>::try_from(seen.as_ref()))
                && let Some(k) = d.get_mut(&key)
                && k.hash == hash
            {
                k.verified = Some(bytes);
            }
            self.rehash_if_weak(&key, &hash, &c.credential);
        }
        ok
    }
}

/// What an unknown device's credential is checked against (random salt and credential).
static UNKNOWN_DEVICE: std::sync::LazyLock<CredentialHash> =
    std::sync::LazyLock::new(|| CredentialHash::new(&crate::hex::random_hex(16), 20_000));

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, device: &str, credential: &str) -> Credentials {
        Credentials {
            user: user.into(),
            device: device.into(),
            credential: credential.into(),
        }
    }

    #[test]
    fn hash_round_trips_and_verifies() {
        let h = CredentialHash::new("s3cr3t!", 1000);
        let text = h.to_string();
        assert!(text.starts_with("pbkdf2-sha256$1000$"));
        let back = CredentialHash::parse(&text).unwrap();
        assert_eq!(back, h);
        assert!(back.verify("s3cr3t!"));
        assert!(!back.verify("s3cr3t"));
        // Two hashes of one credential differ by salt.
        assert_ne!(CredentialHash::new("s3cr3t!", 1000).to_string(), text);
    }

    #[test]
    fn bad_hashes_are_refused_with_a_reason() {
        for bad in [
            "",
            "plain",
            "pbkdf2-sha256$0$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
            "pbkdf2-sha256$10$!!$AA",
            "md5$1$a$b",
        ] {
            assert!(CredentialHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registry_checks_user_device_and_credential() {
        let r = DeviceRegistry::new().with("alice", "sensor1", "s3cr3t!");
        assert!(r.authenticate(&creds("alice", "sensor1", "s3cr3t!")));
        // Second time through the remembered digest.
        assert!(r.authenticate(&creds("alice", "sensor1", "s3cr3t!")));
        assert!(!r.authenticate(&creds("alice", "sensor1", "wrong")));
        assert!(!r.authenticate(&creds("bob", "sensor1", "s3cr3t!")));
        assert!(!r.authenticate(&creds("alice", "sensor2", "s3cr3t!")));
    }

    #[test]
    fn platform_made_credentials_take_a_fast_salted_hash() {
        let h = CredentialHash::fast("tl_0123456789abcdef0123456789abcdef");
        let text = h.to_string();
        assert!(text.starts_with("hmac-sha256$"), "{text}");
        let back = CredentialHash::parse(&text).unwrap();
        assert_eq!(back, h);
        assert!(back.verify("tl_0123456789abcdef0123456789abcdef"));
        assert!(!back.verify("tl_0123456789abcdef0123456789abcdee"));
        // Salted: the same credential hashes differently each time.
        assert_ne!(
            CredentialHash::fast("x").to_string(),
            CredentialHash::fast("x").to_string()
        );
        assert!(CredentialHash::parse("hmac-sha256$AAAAAAAAAAA").is_err());
    }

    /// An unknown device takes the same path as a wrong credential: a full hash check
    /// (shown by structure, not by timing: it is never answered by the quick check).
    #[test]
    fn unknown_devices_get_the_full_check() {
        let r = DeviceRegistry::new().with("alice", "sensor1", "s3cr3t!");
        assert_eq!(r.quick_check(&creds("mallory", "nobody", "guess")), None);
        assert!(!r.authenticate(&creds("mallory", "nobody", "guess")));
        assert_eq!(r.quick_check(&creds("alice", "sensor1", "wrong")), None);
    }

    /// A cloud-managed device's hash weaker than the cloud's policy is replaced at its
    /// next successful login, once; a registry that still shows the old hash keeps the new
    /// one (and drops no connection); a different hash from the cloud (a changed
    /// credential) wins.
    #[test]
    fn weak_hashes_are_rehashed_once_at_login() {
        let r = DeviceRegistry::new();
        let key = DeviceKey::new("alice", "sensor1");
        let weak = CredentialHash::new("s3cr3t!", 10);
        assert!(r.sync_cloud(vec![(key.clone(), weak.clone())]).is_empty());
        assert!(r.authenticate(&creds("alice", "sensor1", "s3cr3t!")));
        assert!(!r.has_upgrades(), "no policy from the cloud yet: nothing to do");

        r.set_policy(Some(50));
        r.forget_verified();
        assert!(!r.authenticate(&creds("alice", "sensor1", "wrong")));
        assert!(!r.has_upgrades(), "only a successful login rehashes");
        assert!(r.authenticate(&creds("alice", "sensor1", "s3cr3t!")));
        let ups = r.take_upgrades(10);
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].old, weak.to_string());
        let new = CredentialHash::parse(&ups[0].new).unwrap();
        assert_eq!(new.iterations(), Some(50));
        assert!(new.verify("s3cr3t!"));
        assert!(r.take_upgrades(10).is_empty(), "sent once");

        // The cloud has not applied it yet: its registry still shows the old hash.
        assert!(r.sync_cloud(vec![(key.clone(), weak.clone())]).is_empty());
        r.forget_verified();
        assert!(r.authenticate(&creds("alice", "sensor1", "s3cr3t!")));
        assert!(r.take_upgrades(10).is_empty(), "no second rehash");
        // Now it has; then an admin changes the credential.
        assert!(r.sync_cloud(vec![(key.clone(), new)]).is_empty());
        let changed = CredentialHash::new("other", 50);
        assert_eq!(r.sync_cloud(vec![(key.clone(), changed)]), vec![key]);
        assert!(!r.authenticate(&creds("alice", "sensor1", "s3cr3t!")));
        assert!(r.authenticate(&creds("alice", "sensor1", "other")));
        // Devices of the local configuration are not the cloud's to rehash.
        let local = DeviceRegistry::new().with("bob", "d", "pw");
        local.set_policy(Some(5_000));
        assert!(local.authenticate(&creds("bob", "d", "pw")));
        assert!(!local.has_upgrades());
    }

    impl DeviceRegistry {
        fn forget_verified(&self) {
            for k in self.devices.write().unwrap().values_mut() {
                k.verified = None;
            }
        }
    }
}
