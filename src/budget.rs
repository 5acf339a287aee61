//! The client-side ELBv2 call budget and the backoff after throttling or server errors.
//!
//! Every ELBv2 call of the process takes a token from one bucket, so the controller as a whole
//! never exceeds its rate however many target groups are pending. Times come from
//! `tokio::time`, so tests run under paused time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` calls per second on average, at most `burst` at once.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
    /// Waiters line up here (tokio's mutex is first come, first served), so an old poll is
    /// never starved by newer ones; only the head of the line waits on the bucket.
    line: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
    /// No calls before this instant (set when ELB throttles the account).
    hold_until: Option<Instant>,
}

impl Budget {
    pub fn new(rate: f64, burst: u32) -> Self {
        assert!(
            rate > 0.0 && burst >= 1,
            "budget needs a positive rate and burst"
        );
        let burst = f64::from(burst);
        Self {
            rate,
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                last: Instant::now(),
                hold_until: None,
            }),
            line: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes a token now, or says how long to wait for one.
    fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().expect("budget lock");
        if let Some(until) = s.hold_until {
            if now < until {
                return Err(until - now);
            }
            s.hold_until = None;
        }
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Ok(())
        } else {
            // At least 1 ms: a wait that rounds to zero would spin without letting time pass.
            Err(Duration::from_secs_f64((1.0 - s.tokens) / self.rate).max(Duration::from_millis(1)))
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let _turn = self.line.lock().await;
        loop {
            match self.try_take(Instant::now()) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Holds every call for `pause` (the account's shared bucket is empty) and empties ours.
    pub fn hold(&self, pause: Duration) {
        let mut s = self.state.lock().expect("budget lock");
        let until = Instant::now() + pause;
        s.hold_until = Some(s.hold_until.map_or(until, |u| u.max(until)));
        s.tokens = 0.0;
        s.last = until;
    }
}

/// Exponential backoff with jitter: `base · 2^n`, capped at `max`, each delay drawn from its
/// upper half so retries from many replicas or groups spread out.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// Records a failure and returns the delay before the next attempt; `jitter` in [0, 1).
    pub fn failure(&mut self, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        let ceiling = exp.min(self.max);
        ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    pub fn success(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn budget_caps_the_rate_after_the_burst() {
        let budget = Arc::new(Budget::new(5.0, 3));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..23 {
            budget.acquire().await;
            times.push(Instant::now() - start);
        }
        // The burst goes at once; the next 20 take 20 / 5 = 4 s.
        assert!(times[..3].iter().all(|t| t.is_zero()));
        let total = times.last().unwrap().as_secs_f64();
        assert!((3.99..=4.01).contains(&total), "took {total}s");
        // In no one-second window after the burst are there more than rate + burst calls.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|u| **u < *t + Duration::from_secs(1))
                .count();
            assert!(in_window <= 5 + 3, "{in_window} calls in a second");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_budget() {
        let budget = Arc::new(Budget::new(5.0, 5));
        let start = Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let b = budget.clone();
                tokio::spawn(async move {
                    b.acquire().await;
                    Instant::now()
                })
            })
            .collect();
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap() - start);
        }
        done.sort();
        // 5 at once, then 45 more at 5/s: the last one at 9 s, never sooner.
        assert!(done[49] >= Duration::from_millis(8990), "{:?}", done[49]);
        let first_second = done.iter().filter(|t| **t < Duration::from_secs(1)).count();
        assert!(first_second <= 10, "{first_second}");
    }

    #[tokio::test(start_paused = true)]
    async fn callers_are_served_in_arrival_order() {
        // Tokens every 20 ms, callers every 7 ms: many callers wait for the same token. (Under
        // paused time wake-ups are never late, so this cannot show the starvation seen in real
        // time without the line; bench_controller's budget scenario measures that.)
        let budget = Arc::new(Budget::new(50.0, 1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..60 {
            let (b, o) = (budget.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                b.acquire().await;
                o.lock().unwrap().push(i);
            }));
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..60).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn hold_pauses_every_caller() {
        let budget = Budget::new(5.0, 5);
        budget.acquire().await;
        budget.hold(Duration::from_secs(3));
        let start = Instant::now();
        budget.acquire().await;
        assert!(Instant::now() - start >= Duration::from_secs(3));
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let upper: Vec<_> = (0..7).map(|_| b.failure(1.0)).collect();
        assert_eq!(
            upper.iter().map(|d| d.as_secs()).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 30, 30]
        );
        b.success();
        assert_eq!(b.failure(0.0), Duration::from_millis(500));
        // Jitter keeps each delay within the upper half of its step.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        b.failure(0.3);
        let d = b.failure(0.3);
        assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2));
        assert_eq!(b.failures(), 2);
    }
}
