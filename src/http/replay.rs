//! Replay protection: remembers recently accepted callbacks so that the same one posted again is not
//! published twice.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most fingerprints per generation by default. hashbrown fills at most 7/8 of its buckets, so this many fill a
/// table of 2^20 buckets (9 MiB) exactly; 2^20 entries would need 2^21 buckets (18 MiB) for 14 % more entries.
pub const GENERATION_ENTRIES: usize = (1 << 20) / 8 * 7;

/// A two-generation set of 64-bit fingerprints: an entry lives at least `retention` and at most twice that.
pub struct ReplayCache {
    hasher: RandomState,
    retention: Duration,
    max_entries: usize,
    generations: Mutex<Generations>,
}

/// Fingerprints are keyed hashes already, so the sets use them as they are instead of hashing them again.
type FingerprintSet = HashSet<u64, BuildHasherDefault<nohash_hasher::NoHashHasher<u64>>>;

struct Generations {
    started: Instant,
    current: FingerprintSet,
    previous: FingerprintSet,
}

impl ReplayCache {
    /// Remembers entries for at least `retention`, at most `max_entries` per generation (a full generation is
    /// retired early, which only shortens protection under an extreme burst).
    pub fn new(retention: Duration, max_entries: usize) -> Self {
        ReplayCache {
            // Keyed per process, so that nobody can craft colliding fingerprints.
            hasher: RandomState::new(),
            retention,
            max_entries,
            generations: Mutex::new(Generations {
                started: Instant::now(),
                current: FingerprintSet::default(),
                previous: FingerprintSet::default(),
            }),
        }
    }

    /// The fingerprint of one callback.
    pub fn fingerprint(&self, parts: impl Hash) -> u64 {
        self.hasher.hash_one(parts)
    }

    /// Records `fingerprint`; false when it was already there (a replay).
    pub fn first_time(&self, fingerprint: u64) -> bool {
        let mut generations = self.generations.lock().expect("replay cache lock");
        if generations.started.elapsed() >= self.retention || generations.current.len() >= self.max_entries {
            // The oldest generation's table becomes the new current one, emptied but with its capacity: after a
            // burst, later generations neither grow again (rehashing every entry at each doubling) nor hold
            // an old and a new table at once, which made the memory peaks.
            let retired = std::mem::take(&mut generations.current);
            let mut reused = std::mem::replace(&mut generations.previous, retired);
            reused.clear();
            generations.current = reused;
            generations.started = Instant::now();
        }
        if generations.previous.contains(&fingerprint) {
            return false;
        }
        generations.current.insert(fingerprint)
    }

    /// Forgets `fingerprint` (its callback was refused after all, so a retry must not count as a replay).
    pub fn forget(&self, fingerprint: u64) {
        let mut generations = self.generations.lock().expect("replay cache lock");
        generations.current.remove(&fingerprint);
        generations.previous.remove(&fingerprint);
    }
}

/// Hashes a hex string regardless of letter case: a `Sign` verifies in either case, so a replay must not escape
/// the cache by changing it.
pub struct CaseFolded<'a>(pub Option<&'a str>);

impl Hash for CaseFolded<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Folded a chunk at a time: one hasher call per byte costs more than the rest of the fingerprint.
        let mut folded = [0u8; 64];
        for chunk in self.0.unwrap_or_default().as_bytes().chunks(folded.len()) {
            let folded = &mut folded[..chunk.len()];
            folded.copy_from_slice(chunk);
            folded.make_ascii_lowercase();
            state.write(folded);
        }
        state.write_u8(0xff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_callback_is_seen_once_until_it_expires() {
        let cache = ReplayCache::new(Duration::from_millis(50), 1000);
        let a = cache.fingerprint(("event", "1669872112", "sign"));
        let b = cache.fingerprint(("event", "1669872113", "sign"));
        assert!(cache.first_time(a));
        assert!(!cache.first_time(a));
        assert!(cache.first_time(b));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.first_time(a), "still remembered in the previous generation");
        std::thread::sleep(Duration::from_millis(60));
        cache.first_time(b);
        assert!(cache.first_time(a), "forgotten after two generations");
        cache.forget(a);
        assert!(cache.first_time(a));
    }

    #[test]
    fn a_full_generation_fits_a_table_of_2_pow_20_buckets() {
        let mut set = FingerprintSet::default();
        let hasher = RandomState::new();
        for n in 0..GENERATION_ENTRIES as u64 {
            set.insert(hasher.hash_one(n));
        }
        assert_eq!(set.len(), GENERATION_ENTRIES);
        assert_eq!(set.capacity(), GENERATION_ENTRIES, "the table grew past 2^20 buckets");
    }

    #[test]
    fn a_retired_generation_table_is_reused_with_its_capacity() {
        let cache = ReplayCache::new(Duration::from_secs(60), 1000);
        // 1,000 entries fill the first generation, 1,000 the second; the 2,001st starts the third generation in
        // the first one's table.
        for n in 0..2001u64 {
            assert!(cache.first_time(cache.fingerprint(n)));
        }
        let generations = cache.generations.lock().unwrap();
        assert_eq!((generations.current.len(), generations.previous.len()), (1, 1000));
        assert!(generations.current.capacity() >= 1000, "a fresh table would have grown to 1 entry only");
    }

    #[test]
    fn sign_case_does_not_change_the_fingerprint() {
        let cache = ReplayCache::new(Duration::from_secs(60), 10);
        let lower = cache.fingerprint((CaseFolded(Some("abcdef")), "1"));
        assert_eq!(lower, cache.fingerprint((CaseFolded(Some("ABCdef")), "1")));
        assert_ne!(lower, cache.fingerprint((CaseFolded(Some("abcdee")), "1")));
        let long = "0123456789ABCDEF".repeat(9);
        assert_eq!(
            cache.fingerprint((CaseFolded(Some(&long)), "1")),
            cache.fingerprint((CaseFolded(Some(&long.to_ascii_lowercase())), "1"))
        );
        assert_ne!(
            cache.fingerprint((CaseFolded(Some(&long)), "1")),
            cache.fingerprint((CaseFolded(Some(&long[..long.len() - 1])), "1"))
        );
    }
}
