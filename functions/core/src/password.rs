//! Account passwords: argon2id hashes in PHC string form.

use crate::error::{Error, Result};
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::cell::RefCell;
use std::ops::RangeInclusive;

/// Passwords shorter than this are refused when an account is written.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longer passwords are refused (and never hashed at login): hashing is deliberately slow, and its cost grows with
/// the input.
pub const MAX_PASSWORD_LEN: usize = 1024;

pub fn hash_password(password: &str) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::invalid(format!("password must be at least {MIN_PASSWORD_LEN} characters")));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default() // argon2id, v19, OWASP's minimum parameters
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("hashing password: {e}")))
}

/// The argon2id memory cost (KiB) a stored hash may carry: from OWASP's minimum (19 MiB) to 64 MiB. Below it a
/// leaked hash is cheap to crack; above it every login of the account would take that much memory.
pub const MEMORY_KIB: RangeInclusive<u32> = Params::DEFAULT_M_COST..=64 * 1024;
/// The argon2id iterations a stored hash may carry.
pub const ITERATIONS: RangeInclusive<u32> = 2..=10;
/// The argon2id lanes a stored hash may carry.
pub const LANES: RangeInclusive<u32> = 1..=4;

/// The parameters of `phc` when it is an argon2id v19 hash within [`MEMORY_KIB`], [`ITERATIONS`] and [`LANES`],
/// with a salt and a 16..=64-byte output.
fn accepted_params(hash: &PasswordHash<'_>) -> Result<Params> {
    let refuse = |why: String| Err(Error::invalid(format!("passwordHash: {why}")));
    if hash.algorithm.as_str() != "argon2id" || hash.version != Some(Version::V0x13.into()) {
        return refuse("must be argon2id, version 19".into());
    }
    let params = Params::try_from(hash).map_err(|e| Error::invalid(format!("passwordHash: {e}")))?;
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if !MEMORY_KIB.contains(&m) || !ITERATIONS.contains(&t) || !LANES.contains(&p) {
        return refuse(format!(
            "m={m},t={t},p={p} is outside the accepted range m={}..={} (KiB), t={}..={}, p={}..={}",
            MEMORY_KIB.start(),
            MEMORY_KIB.end(),
            ITERATIONS.start(),
            ITERATIONS.end(),
            LANES.start(),
            LANES.end()
        ));
    }
    if hash.salt.is_none() || hash.hash.as_ref().is_none_or(|h| !(16..=64).contains(&h.len())) {
        return refuse("needs a salt and a 16 to 64 byte hash".into());
    }
    Ok(params)
}

/// Refuses (`INVALID`, naming the accepted range) a PHC string MetaHub would not verify.
pub fn validate_hash(phc: &str) -> Result<()> {
    let hash = PasswordHash::new(phc).map_err(|e| Error::invalid(format!("passwordHash is not a PHC string ({e})")))?;
    accepted_params(&hash).map(|_| ())
}

thread_local! {
    /// argon2's working memory, kept by each thread that verifies: no 19 MiB allocation per login, so the
    /// allocator never holds more than one block set per thread.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Whether `password` matches `phc`. A malformed stored hash, or one outside the accepted parameters, never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let Ok(params) = accepted_params(&hash) else {
        tracing::warn!("a stored password hash has parameters outside the accepted range: login refused");
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let mut out = [0u8; 64];
    let out = &mut out[..expected.len()];
    let blocks = params.block_count();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        let computed = argon2.hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks]);
        // Keep the common size; give back what a larger (accepted) hash needed.
        if memory.len() > Params::DEFAULT_M_COST as usize {
            *memory = Vec::new();
        }
        // Output's equality is constant-time.
        computed.is_ok() && Output::new(out).is_ok_and(|o| o == expected)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert!(hash_password("short").is_err());
        validate_hash(&h).unwrap();
    }

    #[test]
    fn only_a_documented_range_of_parameters_is_accepted() {
        let salt = SaltString::generate(&mut OsRng);
        let with = |m: u32, t: u32, p: u32| {
            let params = Params::new(m, t, p, None).unwrap();
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params).hash_password(b"pw", &salt).unwrap().to_string()
        };
        for (m, t, p) in [(8, 1, 1), (19 * 1024, 1, 1), (128 * 1024, 2, 1), (19 * 1024, 2, 8), (19 * 1024, 11, 1)] {
            let phc = with(m, t, p);
            assert!(validate_hash(&phc).is_err(), "m={m},t={t},p={p}");
            assert!(!verify_password("pw", &phc), "never verified either: m={m},t={t},p={p}");
        }
        let good = with(19 * 1024, 2, 1);
        validate_hash(&good).unwrap();
        assert!(verify_password("pw", &good));
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::default()).hash_password(b"pw", &salt);
        assert!(validate_hash(&argon2i.unwrap().to_string()).is_err());
        // the 4 GiB hash from the report is refused by the text alone, without allocating
        assert!(validate_hash("$argon2id$v=19$m=4194304,t=4294967295,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA").is_err());
    }
}
