//! What keeps `/token` standing under guessing and floods: the login throttle and the hashing gate.
//!
//! * **Per (login, source)**: attempts of one pair run one at a time, and each is counted as a failure *before* the
//!   password is checked (undone on success): a burst cannot pass the check together. After
//!   [`Limits::free_failures`] failures the pair waits 1 s, 2 s, 4 s … up to [`Limits::max_backoff`] between tries.
//! * **Per login, a ceiling**: past [`Limits::login_ceiling`] failures in a window from all sources, only sources
//!   without a recent failure for that login may try. Guessing from many addresses gets one try per address per
//!   window, while the machines that know the password (no failures) log in as usual: no lockout of a node class.
//! * **Per source, a ceiling**: past [`Limits::source_ceiling`] attempts in flight or failed in a window, the
//!   source is refused (spraying many logins from one address).
//! * **The hashing gate**: argon2id takes 19 MiB and tens of ms per check; at most `workers` run at once, at most
//!   `queue` more requests are admitted, and the rest are refused at once with 503, before the throttle or the
//!   store is even asked — memory stays bounded whatever the flood.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Failures of one (login, source) before it backs off.
    pub free_failures: u32,
    /// The longest wait between tries of one (login, source); also the ceilings' window.
    pub max_backoff: Duration,
    /// A (login, source) quiet for this long starts afresh.
    pub forget_after: Duration,
    pub login_ceiling: u32,
    pub source_ceiling: u32,
    /// Records kept at most; past it, records that refuse nothing are dropped first.
    pub max_tracked: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            free_failures: 5,
            max_backoff: Duration::from_secs(60),
            forget_after: Duration::from_secs(15 * 60),
            login_ceiling: 30,
            source_ceiling: 30,
            max_tracked: 50_000,
        }
    }
}

/// A refused attempt, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub retry_after: Duration,
}

#[derive(Default)]
struct PairRecord {
    failures: u32,
    last: Option<Instant>,
}

/// Failures (and attempts in flight) in a fixed window.
struct WindowCount {
    start: Instant,
    count: u32,
}

#[derive(Default)]
struct State {
    pairs: HashMap<(String, String), PairRecord>,
    logins: HashMap<String, WindowCount>,
    sources: HashMap<String, WindowCount>,
}

type Turns = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

#[derive(Default)]
pub struct LoginThrottle {
    limits: Limits,
    state: Mutex<State>,
    turns: Mutex<Turns>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent between statements: a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The count of `key`'s current window; 0 (and the record dropped) when its window is over.
fn current<K: Hash + Eq>(map: &mut HashMap<K, WindowCount>, key: &K, now: Instant, window: Duration) -> u32 {
    match map.get(key) {
        Some(w) if now.duration_since(w.start) < window => w.count,
        Some(_) => {
            map.remove(key);
            0
        }
        None => 0,
    }
}

fn window_left(map: &HashMap<String, WindowCount>, key: &str, now: Instant, window: Duration) -> Duration {
    map.get(key).map_or(window, |w| window.saturating_sub(now.duration_since(w.start)))
}

fn bump(map: &mut HashMap<String, WindowCount>, key: &str, now: Instant) {
    map.entry(key.to_owned()).or_insert(WindowCount { start: now, count: 0 }).count += 1;
}

fn unbump(map: &mut HashMap<String, WindowCount>, key: &str) {
    if let Some(w) = map.get_mut(key) {
        w.count = w.count.saturating_sub(1);
    }
}

/// How long the pair must still wait before its next try, when it is backing off.
fn backoff_left(pair: &PairRecord, limits: &Limits, now: Instant) -> Option<Duration> {
    let last = pair.last?;
    if pair.failures < limits.free_failures {
        return None;
    }
    let excess = (pair.failures - limits.free_failures).min(16);
    let wait = Duration::from_secs(1 << excess).min(limits.max_backoff);
    wait.checked_sub(now.duration_since(last)).filter(|left| !left.is_zero())
}

impl LoginThrottle {
    #[cfg(test)]
    fn new(limits: Limits) -> Self {
        LoginThrottle { limits, ..LoginThrottle::default() }
    }

    /// Waits for the pair's turn, then checks and reserves atomically: the attempt counts as a failure until
    /// [`Attempt::succeeded`]. A cancelled attempt stays counted.
    pub async fn begin(&self, login: &str, source: Option<&str>) -> Result<Attempt<'_>, Refusal> {
        let key = (login.to_owned(), source.unwrap_or_default().to_owned());
        let mutex = lock(&self.turns).entry(key.clone()).or_default().clone();
        let mut turn = Turn { throttle: self, key, mutex, guard: None };
        turn.guard = Some(turn.mutex.clone().lock_owned().await);
        self.reserve(&turn.key, Instant::now())?;
        Ok(Attempt { throttle: self, turn: Some(turn) })
    }

    fn reserve(&self, (login, source): &(String, String), now: Instant) -> Result<(), Refusal> {
        let limits = &self.limits;
        let window = limits.max_backoff;
        let refuse = |wait: Duration| Err(Refusal { retry_after: wait.max(Duration::from_secs(1)) });
        let mut state = lock(&self.state);
        let state = &mut *state;
        if state.pairs.len() + state.logins.len() + state.sources.len() > limits.max_tracked {
            self.prune(state, now);
        }
        let key = (login.clone(), source.clone());
        let pair = state.pairs.entry(key).or_default();
        if pair.last.is_some_and(|last| now.duration_since(last) >= limits.forget_after) {
            *pair = PairRecord::default();
        }
        if let Some(left) = backoff_left(pair, limits, now) {
            return refuse(left);
        }
        let failed_before = pair.failures > 0;
        if failed_before && current(&mut state.logins, login, now, window) >= limits.login_ceiling {
            return refuse(window_left(&state.logins, login, now, window));
        }
        if current(&mut state.sources, source, now, window) >= limits.source_ceiling {
            return refuse(window_left(&state.sources, source, now, window));
        }
        pair.failures += 1;
        pair.last = Some(now);
        bump(&mut state.logins, login, now);
        bump(&mut state.sources, source, now);
        Ok(())
    }

    /// Whether an attempt of this pair would be refused now, without counting one: credentials verified a moment
    /// ago are never accepted where the throttle would refuse a check (a refused guess must not learn whether it
    /// was right).
    pub fn refuses(&self, login: &str, source: Option<&str>) -> bool {
        let limits = &self.limits;
        let (now, window) = (Instant::now(), limits.max_backoff);
        let source = source.unwrap_or_default().to_owned();
        let mut state = lock(&self.state);
        let state = &mut *state;
        let failures = match state.pairs.get(&(login.to_owned(), source.clone())) {
            Some(pair) if pair.last.is_some_and(|last| now.duration_since(last) < limits.forget_after) => {
                if backoff_left(pair, limits, now).is_some() {
                    return true;
                }
                pair.failures
            }
            _ => 0,
        };
        (failures > 0 && current(&mut state.logins, &login.to_owned(), now, window) >= limits.login_ceiling)
            || current(&mut state.sources, &source, now, window) >= limits.source_ceiling
    }

    /// Drops what refuses nothing any more, then, if still too many, every pair record that is not backing off:
    /// an attacker filling the maps loses its own history first.
    fn prune(&self, state: &mut State, now: Instant) {
        let limits = &self.limits;
        let window = limits.max_backoff;
        state.logins.retain(|_, w| now.duration_since(w.start) < window);
        state.sources.retain(|_, w| now.duration_since(w.start) < window);
        state.pairs.retain(|_, p| p.last.is_some_and(|last| now.duration_since(last) < limits.forget_after));
        if state.pairs.len() + state.logins.len() + state.sources.len() > limits.max_tracked {
            state.pairs.retain(|_, p| p.failures >= limits.free_failures);
            state.logins.retain(|_, w| w.count >= limits.login_ceiling);
            state.sources.retain(|_, w| w.count >= limits.source_ceiling);
        }
    }

    /// Undoes the reservation; `forget` also clears the pair's failures (the password was right).
    fn settle(&self, (login, source): &(String, String), forget: bool) {
        let mut state = lock(&self.state);
        let pair_key = (login.clone(), source.clone());
        if forget {
            state.pairs.remove(&pair_key);
        } else if let Some(pair) = state.pairs.get_mut(&pair_key) {
            pair.failures = pair.failures.saturating_sub(1);
        }
        unbump(&mut state.logins, login);
        unbump(&mut state.sources, source);
    }

    #[cfg(test)]
    fn tracked_turns(&self) -> usize {
        lock(&self.turns).len()
    }
}

/// The pair's turn: released (and its entry dropped when no one else waits) however the attempt ends.
struct Turn<'a> {
    throttle: &'a LoginThrottle,
    key: (String, String),
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut turns = lock(&self.throttle.turns);
        // Ours and the map's: nobody else holds or waits for this turn.
        if turns.get(&self.key).is_some_and(|m| Arc::ptr_eq(m, &self.mutex) && Arc::strong_count(m) == 2) {
            turns.remove(&self.key);
        }
    }
}

/// A login attempt in progress, counted as a failure unless it [`succeeded`](Attempt::succeeded).
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    turn: Option<Turn<'a>>,
}

impl Attempt<'_> {
    /// The password was right: the pair starts afresh.
    pub fn succeeded(mut self) {
        if let Some(turn) = self.turn.take() {
            self.throttle.settle(&turn.key, true);
        }
    }

    /// No password was checked (the gate was full, the store failed): not a guess.
    pub fn withdraw(mut self) {
        if let Some(turn) = self.turn.take() {
            self.throttle.settle(&turn.key, false);
        }
    }
}

/// Runs password checks on `workers` dedicated threads, with at most `queue` more requests admitted and waiting.
/// Dedicated threads (not the blocking pool, which grows to hundreds under a flood): argon2's 19 MiB blocks are
/// allocated and freed by the same few threads, so the allocator keeps at most a few of them.
pub struct HashingGate {
    admission: Arc<Semaphore>,
    /// Checks handed to the workers so far.
    checks: AtomicU64,
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The gate is full: refuse at once, without hashing.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

/// A request let through the gate; it holds its place until its check is done.
pub struct Admission<'a> {
    gate: &'a HashingGate,
    permit: OwnedSemaphorePermit,
}

impl HashingGate {
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..workers {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new().name(format!("metahub-password-{i}")).spawn(move || {
                loop {
                    let job = lock(&receiver).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the gate is gone
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-check thread");
            }
        }
        HashingGate {
            admission: Arc::new(Semaphore::new(workers + queue)),
            checks: AtomicU64::new(0),
            jobs: Mutex::new(sender),
        }
    }

    /// One worker per core (at most 4): argon2 is CPU-bound, more would only add memory.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.clamp(1, 4), 32)
    }

    /// How many password checks were handed to the workers since start.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// A place in the gate, or [`Busy`] at once.
    pub fn admit(&self) -> Result<Admission<'_>, Busy> {
        let permit = self.admission.clone().try_acquire_owned().map_err(|_| Busy)?;
        Ok(Admission { gate: self, permit })
    }
}

impl Admission<'_> {
    /// Runs `check` on a worker. The place moves with the job: a caller that goes away does not free it while the
    /// check goes on.
    pub async fn run<T: Send + 'static>(self, check: impl FnOnce() -> T + Send + 'static) -> Result<T, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let permit = self.permit;
        let job: Job = Box::new(move || {
            let _ = reply.send(check());
            drop(permit);
        });
        lock(&self.gate.jobs).send(job).map_err(|_| Busy)?;
        self.gate.checks.fetch_add(1, Ordering::Relaxed);
        answer.await.map_err(|_| Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(login: &str, source: &str) -> (String, String) {
        (login.to_owned(), source.to_owned())
    }

    #[test]
    fn a_pair_backs_off_after_its_free_failures() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..5 {
            t.reserve(&key("alice", "a"), now).unwrap();
        }
        let r = t.reserve(&key("alice", "a"), now).unwrap_err();
        assert_eq!(r.retry_after, Duration::from_secs(1));
        t.reserve(&key("alice", "a"), now + Duration::from_secs(1)).unwrap();
        let r = t.reserve(&key("alice", "a"), now + Duration::from_secs(1)).unwrap_err();
        assert_eq!(r.retry_after, Duration::from_secs(2), "the wait doubles");
        // the right password from another source is not affected
        t.reserve(&key("alice", "b"), now).unwrap();
    }

    #[test]
    fn the_login_ceiling_slows_failing_sources_but_not_clean_ones() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..30 {
            t.reserve(&key("alice", &format!("s{i}")), now).unwrap();
        }
        // a source that failed before is refused for the rest of the window; a clean one still tries
        assert!(t.reserve(&key("alice", "s0"), now).is_err());
        t.reserve(&key("alice", "clean"), now).unwrap();
        t.reserve(&key("bob", "s0"), now).unwrap();
    }

    #[test]
    fn refuses_answers_as_an_attempt_would_without_counting_one() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        assert!(!t.refuses("alice", Some("a")));
        for _ in 0..5 {
            t.reserve(&key("alice", "a"), now).unwrap();
        }
        assert!(t.refuses("alice", Some("a")), "backing off");
        assert!(!t.refuses("alice", Some("b")), "another source is not");
        for i in 0..30 {
            t.reserve(&key(&format!("u{i}"), "spray"), now).unwrap();
        }
        assert!(t.refuses("anyone", Some("spray")), "the source ceiling");
        assert_eq!(lock(&t.state).pairs.len(), 31, "asking adds no record");
    }

    #[test]
    fn a_source_ceiling_stops_spraying() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..30 {
            t.reserve(&key(&format!("user{i}"), "x"), now).unwrap();
        }
        let r = t.reserve(&key("user30", "x"), now).unwrap_err();
        assert!(r.retry_after <= Duration::from_secs(60) && r.retry_after >= Duration::from_secs(1));
        assert!(t.reserve(&key("user30", "x"), now + Duration::from_secs(60)).is_ok(), "the window ends");
    }

    #[tokio::test]
    async fn success_is_not_counted_and_concurrent_attempts_do_not_pass_together() {
        let t = Arc::new(LoginThrottle::default());
        for _ in 0..20 {
            t.begin("alice", Some("a")).await.unwrap().succeeded();
        }
        // 40 concurrent wrong passwords: only the free failures are checked
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let t = t.clone();
                tokio::spawn(async move {
                    let attempt = t.begin("alice", Some("b")).await;
                    tokio::task::yield_now().await;
                    attempt.is_ok()
                })
            })
            .collect();
        let mut checked = 0;
        for task in tasks {
            checked += usize::from(task.await.unwrap());
        }
        assert_eq!(checked, 5);
        assert_eq!(t.tracked_turns(), 0, "turns are dropped once nobody waits");
    }

    #[tokio::test]
    async fn a_cancelled_attempt_releases_its_turn() {
        let t = LoginThrottle::default();
        let held = t.begin("alice", Some("a")).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(10), t.begin("alice", Some("a"))).await;
        assert!(waiting.is_err(), "the second attempt waits for the first");
        drop(held);
        assert_eq!(t.tracked_turns(), 0);
    }

    #[test]
    fn records_stay_bounded() {
        let t = LoginThrottle::new(Limits { max_tracked: 100, ..Limits::default() });
        let now = Instant::now();
        for i in 0..1000 {
            let _ = t.reserve(&key(&format!("u{i}"), &format!("s{i}")), now);
        }
        let state = lock(&t.state);
        assert!(state.pairs.len() + state.logins.len() + state.sources.len() <= 103);
    }

    #[tokio::test]
    async fn the_gate_refuses_past_its_queue_at_once() {
        let gate = HashingGate::new(1, 1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let first = gate.admit().unwrap();
        let second = gate.admit().unwrap();
        assert!(gate.admit().is_err(), "two places: one working, one waiting");
        let first = first.run(move || wait.recv().is_ok());
        let second = second.run(|| 2);
        release.send(()).unwrap();
        assert_eq!(tokio::join!(first, second), (Ok(true), Ok(2)));
        assert_eq!(gate.admit().unwrap().run(|| 3).await, Ok(3), "places come back");
    }
}
