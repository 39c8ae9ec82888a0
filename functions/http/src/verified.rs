//! Credentials verified a moment ago, so that a fleet logging in with one machine-type account pays one argon2id
//! check, not one per node.
//!
//! * Kept under an HMAC-SHA256 of login and password with a key drawn at start and never shown: the map holds
//!   neither the password nor anything that can be checked offline against a guess.
//! * Only a password the stored hash accepted is kept, with a digest of that hash; an entry lives
//!   [`VERIFIED_LIFETIME`] at most, is dropped when the account changes in this process
//!   ([`VerifiedLogins::forget`]), and a hit counts only while the account as read from the store still has the
//!   hash it was verified against (the caller reads it on every login: a change made by another process or Lambda
//!   instance counts at once).
//! * Logins with the same credentials at the same moment share one check ([`VerifiedLogins::join`]): one leads, the
//!   rest wait for its answer without holding a place in the hashing gate. A failed check is not shared: whoever
//!   waited then goes through the throttle and the gate on its own, as every wrong password does.

use hmac::{Hmac, Mac};
use metahub_core::Secret;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How long a verified password is taken as right without another hash.
pub const VERIFIED_LIFETIME: Duration = Duration::from_secs(60);
/// Credentials kept at most (a verified entry is about a hundred bytes). Only right passwords get in, so a flood of
/// guesses cannot fill it; when full, new logins are simply not remembered.
const MAX_VERIFIED: usize = 10_000;
/// Logins waiting at once for another's check; past it, a login goes through the gate as if alone (and the gate
/// refuses it at once when full): memory stays bounded however many identical requests arrive.
const MAX_WAITING: usize = 4096;

/// The HMAC of a login and password under the process's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialId([u8; 32]);

/// A password verified against the stored hash whose SHA-256 is `hash`.
#[derive(Clone)]
struct Verified {
    login: String,
    hash: [u8; 32],
    at: Instant,
}

pub struct VerifiedLogins {
    key: Secret<Vec<u8>>,
    lifetime: Duration,
    entries: Mutex<HashMap<CredentialId, Verified>>,
    checks: Checks,
    waiting: Arc<Semaphore>,
}

impl Default for VerifiedLogins {
    fn default() -> Self {
        Self::new(VERIFIED_LIFETIME)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every write is one statement: a panic elsewhere cannot leave the maps half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// SHA-256 of a stored PHC string: enough to tell whether the account's hash changed.
pub fn hash_digest(password_hash: &Secret<String>) -> [u8; 32] {
    Sha256::digest(password_hash.expose_str().as_bytes()).into()
}

type Checks = Arc<Mutex<HashMap<CredentialId, watch::Receiver<()>>>>;

/// Where a login stands with respect to the checks in flight.
pub enum Flight {
    /// Nobody checks these credentials now: this login checks them; the others wait until it is dropped.
    Lead(Lead),
    /// Another login checks the same credentials: wait with [`Wait::done`], then look again.
    Wait(Wait),
    /// Too many logins wait already: go alone.
    Alone,
}

/// The leading check: when it is dropped (answer, error, cancelled request) it leaves the map, then its waiters
/// wake.
pub struct Lead {
    checks: Checks,
    id: CredentialId,
    _done: watch::Sender<()>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        lock(&self.checks).remove(&self.id);
    }
}

pub struct Wait {
    done: watch::Receiver<()>,
    _place: OwnedSemaphorePermit,
}

impl Wait {
    /// Returns once the leading check is over, whatever its answer.
    pub async fn done(mut self) {
        // The leader never sends: the channel closes when it is dropped.
        while self.done.changed().await.is_ok() {}
    }
}

impl VerifiedLogins {
    pub fn new(lifetime: Duration) -> Self {
        VerifiedLogins {
            key: rand::random::<[u8; 32]>().to_vec().into(),
            lifetime,
            entries: Mutex::new(HashMap::new()),
            checks: Arc::default(),
            waiting: Arc::new(Semaphore::new(MAX_WAITING)),
        }
    }

    pub fn id(&self, login: &str, password: &str) -> CredentialId {
        // hmac accepts keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.expose()).expect("HMAC takes any key length");
        // The login's length first: ("ab", "c") and ("a", "bc") never collide.
        mac.update(&(login.len() as u64).to_be_bytes());
        mac.update(login.as_bytes());
        mac.update(password.as_bytes());
        CredentialId(mac.finalize().into_bytes().into())
    }

    /// The digest of the stored hash these credentials were verified against, if that was less than the lifetime
    /// ago.
    pub fn get(&self, id: &CredentialId) -> Option<[u8; 32]> {
        let mut entries = lock(&self.entries);
        match entries.get(id) {
            Some(v) if v.at.elapsed() < self.lifetime => Some(v.hash),
            Some(_) => {
                entries.remove(id);
                None
            }
            None => None,
        }
    }

    /// Notes that `login`'s password, as `id`, matched the stored hash `password_hash` just now.
    pub fn remember(&self, id: CredentialId, login: &str, password_hash: &Secret<String>) {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_VERIFIED {
            let lifetime = self.lifetime;
            entries.retain(|_, v| v.at.elapsed() < lifetime);
            if entries.len() >= MAX_VERIFIED {
                return;
            }
        }
        entries.insert(id, Verified { login: login.to_owned(), hash: hash_digest(password_hash), at: Instant::now() });
    }

    /// Drops one entry (its account's hash changed).
    pub fn drop_entry(&self, id: &CredentialId) {
        lock(&self.entries).remove(id);
    }

    /// Drops every entry of `login`: its account changed (password, machine type, repositories) or is gone.
    pub fn forget(&self, login: &str) {
        lock(&self.entries).retain(|_, v| v.login != login);
    }

    /// Leads the check of `id`, or waits for the one in flight.
    pub fn join(&self, id: CredentialId) -> Flight {
        let mut checks = lock(&self.checks);
        if let Some(done) = checks.get(&id) {
            return match self.waiting.clone().try_acquire_owned() {
                Ok(place) => Flight::Wait(Wait { done: done.clone(), _place: place }),
                Err(_) => Flight::Alone,
            };
        }
        let (sender, receiver) = watch::channel(());
        checks.insert(id, receiver);
        Flight::Lead(Lead { checks: self.checks.clone(), id, _done: sender })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(text: &str) -> Secret<String> {
        text.to_owned().into()
    }

    #[test]
    fn a_verified_password_is_found_until_its_lifetime_ends() {
        let v = VerifiedLogins::new(Duration::from_millis(50));
        let id = v.id("node", "battery staple");
        assert_eq!(v.get(&id), None, "nothing before a check");
        v.remember(id, "node", &hash("$argon2id$h1"));
        assert_eq!(v.get(&id), Some(hash_digest(&hash("$argon2id$h1"))));
        assert_eq!(v.get(&v.id("node", "battery stapl")), None, "another password is another key");
        assert_eq!(v.get(&v.id("nod", "ebattery staple")), None, "the login's length is part of the key");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(v.get(&id), None, "expired");
        assert_eq!(v.len(), 0, "and dropped");
    }

    #[test]
    fn keys_differ_per_process_and_account_changes_drop_every_entry_of_the_login() {
        let (a, b) = (VerifiedLogins::default(), VerifiedLogins::default());
        assert!(a.id("node", "pw") != b.id("node", "pw"), "a key of its own per process");
        a.remember(a.id("node", "pw"), "node", &hash("h"));
        a.remember(a.id("node", "old pw"), "node", &hash("h0"));
        a.remember(a.id("other", "pw"), "other", &hash("h"));
        a.forget("node");
        assert_eq!(a.get(&a.id("node", "pw")), None);
        assert_eq!(a.get(&a.id("node", "old pw")), None);
        assert!(a.get(&a.id("other", "pw")).is_some(), "other logins stay");
        a.drop_entry(&a.id("other", "pw"));
        assert_eq!(a.len(), 0);
    }

    #[tokio::test]
    async fn one_check_leads_the_others_wait_for_it() {
        let v = VerifiedLogins::default();
        let id = v.id("node", "pw");
        let Flight::Lead(lead) = v.join(id) else { panic!("the first leads") };
        let Flight::Wait(wait) = v.join(id) else { panic!("the second waits") };
        assert!(matches!(v.join(v.id("node", "other")), Flight::Lead(_)), "other credentials are not held up");
        let waiting = tokio::spawn(wait.done());
        v.remember(id, "node", &hash("h"));
        drop(lead);
        waiting.await.unwrap();
        assert!(v.get(&id).is_some());
        assert!(matches!(v.join(id), Flight::Lead(_)), "the check is over: the next one leads again");
    }
}
