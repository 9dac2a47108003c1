//! Session tickets that resume on any process of a cluster. The kernel
//! spreads a client's reconnections over the workers (SO_REUSEPORT), so a
//! ticket made by one must open on every other: all of them derive their
//! keys from one secret that the master makes at boot and its workers
//! inherit (a fork shares it; an exec'd worker reads it from a pipe,
//! [`TicketKeys::export`]).
//!
//! Keys rotate every [`PERIOD_SECS`]: the key of period n + 1 is derived
//! from that of period n by a one-way function (HKDF), and a process
//! forgets a key once its period is two behind. Every process computes the
//! same key for the same period without talking to the others, and a key
//! taken from memory opens no ticket older than the period before it. A
//! ticket is accepted in the period it was made and the next.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// How long one ticket key is the current one.
pub const PERIOD_SECS: u64 = 6 * 60 * 60;

const SECRET_LEN: usize = 32;
/// The serialized state: period (8 bytes) and its key.
pub const EXPORT_LEN: usize = 8 + SECRET_LEN;

/// The ticket keys of this process.
#[derive(Debug)]
pub struct TicketKeys {
    ratchet: Mutex<Ratchet>,
    random: SystemRandom,
}

#[derive(Clone)]
struct Ratchet {
    period: u64,
    key: [u8; SECRET_LEN],
    /// The key of `period - 1`, while tickets made with it are accepted.
    previous: Option<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ratchet {{ period: {} }}", self.period)
    }
}

impl Ratchet {
    /// Moves to `period` (never back), forgetting what is two behind.
    fn advance_to(&mut self, period: u64) {
        if period <= self.period {
            return;
        }
        // Only the last two keys matter; a long sleep costs one step per
        // period missed (four a day).
        while self.period < period {
            self.previous = Some(self.key);
            self.key = derive(&self.key, b"butterflies ticket ratchet");
            self.period += 1;
        }
    }

    fn key_for(&self, period: u64) -> Option<[u8; SECRET_LEN]> {
        if period == self.period {
            Some(self.key)
        } else if period + 1 == self.period {
            self.previous
        } else {
            None
        }
    }
}

fn derive(secret: &[u8; SECRET_LEN], label: &[u8]) -> [u8; SECRET_LEN] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"butterflies").extract(secret);
    let mut out = [0u8; SECRET_LEN];
    // Expanding 32 bytes of SHA-256 output cannot fail.
    if let Ok(okm) = prk.expand(&[label], hkdf::HKDF_SHA256) {
        let _ = okm.fill(&mut out);
    }
    out
}

fn aead_key(secret: &[u8; SECRET_LEN]) -> Option<LessSafeKey> {
    let bytes = derive(secret, b"butterflies ticket aead");
    UnboundKey::new(&aead::CHACHA20_POLY1305, &bytes)
        .ok()
        .map(LessSafeKey::new)
}

fn current_period(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / PERIOD_SECS)
        .unwrap_or(0)
}

impl TicketKeys {
    /// A fresh secret for the current period.
    pub fn generate() -> std::io::Result<TicketKeys> {
        let random = SystemRandom::new();
        let mut key = [0u8; SECRET_LEN];
        random
            .fill(&mut key)
            .map_err(|_| std::io::Error::other("no randomness for TLS ticket keys"))?;
        Ok(TicketKeys::from_state(
            current_period(SystemTime::now()),
            key,
        ))
    }

    fn from_state(period: u64, key: [u8; SECRET_LEN]) -> TicketKeys {
        TicketKeys {
            ratchet: Mutex::new(Ratchet {
                period,
                key,
                previous: None,
            }),
            random: SystemRandom::new(),
        }
    }

    /// The state another process of the cluster continues from.
    pub fn export(&self) -> [u8; EXPORT_LEN] {
        let ratchet = self.ratchet_at(SystemTime::now());
        let mut out = [0u8; EXPORT_LEN];
        out[..8].copy_from_slice(&ratchet.period.to_be_bytes());
        out[8..].copy_from_slice(&ratchet.key);
        out
    }

    /// Continues from [`TicketKeys::export`]'s bytes.
    pub fn import(bytes: &[u8]) -> Option<TicketKeys> {
        let period = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let key: [u8; SECRET_LEN] = bytes.get(8..EXPORT_LEN)?.try_into().ok()?;
        Some(TicketKeys::from_state(period, key))
    }

    fn ratchet_at(&self, now: SystemTime) -> Ratchet {
        let mut ratchet = match self.ratchet.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        ratchet.advance_to(current_period(now));
        ratchet.clone()
    }

    /// `period ‖ nonce ‖ sealed ticket`.
    fn seal(&self, plain: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let ratchet = self.ratchet_at(now);
        let key = aead_key(&ratchet.key)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(8 + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&ratchet.period.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(ratchet.period.to_be_bytes()),
            &mut sealed,
        )
        .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, ticket: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let period = u64::from_be_bytes(ticket.get(..8)?.try_into().ok()?);
        let nonce: [u8; NONCE_LEN] = ticket.get(8..8 + NONCE_LEN)?.try_into().ok()?;
        let secret = self.ratchet_at(now).key_for(period)?;
        let key = aead_key(&secret)?;
        let mut sealed = ticket.get(8 + NONCE_LEN..)?.to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(period.to_be_bytes()),
                &mut sealed,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(PERIOD_SECS).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, SystemTime::now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn at(period: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(period * PERIOD_SECS + 60)
    }

    #[test]
    fn a_ticket_opens_in_another_process_continued_from_the_export() {
        let master = TicketKeys::generate().unwrap();
        let worker = TicketKeys::import(&master.export()).unwrap();
        let now = SystemTime::now();
        let ticket = master.seal(b"session state", now).unwrap();
        assert_eq!(worker.open(&ticket, now).unwrap(), b"session state");
    }

    #[test]
    fn keys_rotate_and_processes_agree_without_talking() {
        let a = TicketKeys::from_state(100, [7; SECRET_LEN]);
        let b = TicketKeys::from_state(100, [7; SECRET_LEN]);
        let made = a.seal(b"x", at(100)).unwrap();
        // b has moved on one period on its own: still accepted.
        assert_eq!(b.open(&made, at(101)).unwrap(), b"x");
        // Two periods on: the key is gone everywhere.
        assert!(b.open(&made, at(102)).is_none());
        assert!(a.open(&made, at(102)).is_none());
        // A ticket made in period 102 by a opens in b, which got there by
        // its own steps.
        let later = a.seal(b"y", at(102)).unwrap();
        assert_eq!(b.open(&later, at(102)).unwrap(), b"y");
    }

    #[test]
    fn a_foreign_or_altered_ticket_is_refused() {
        let a = TicketKeys::generate().unwrap();
        let b = TicketKeys::generate().unwrap();
        let now = SystemTime::now();
        let ticket = a.seal(b"secret", now).unwrap();
        assert!(b.open(&ticket, now).is_none(), "another cluster's secret");
        let mut altered = ticket.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(a.open(&altered, now).is_none());
        assert!(a.open(&ticket[..10], now).is_none(), "truncated");
        assert!(a.open(b"", now).is_none());
    }
}
