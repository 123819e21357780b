//! Rate limits for log lines a guest can cause: a hostile guest that triggers one in a
//! loop must not flood the host log (the partition's stderr, kept by the supervisor).
//!
//! Each call site of [`limited!`](crate::limited) gets its own [`RateLimit`]: at most
//! [`LINES_PER_SECOND`] lines in any one-second window, and when a later window lets a
//! line through after some were dropped, one line first saying how many.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may log per second.
pub const LINES_PER_SECOND: u32 = 10;

const WINDOW: Duration = Duration::from_secs(1);

/// What [`RateLimit::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log the line; `suppressed` lines were dropped since the last one logged (say so
    /// first when non-zero).
    Log { suppressed: u64 },
    /// Drop the line (it is counted).
    Suppress,
}

/// A per-call-site budget of log lines.
pub struct RateLimit {
    per_window: u32,
    state: Mutex<State>,
}

struct State {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(per_window: u32) -> Self {
        Self {
            per_window,
            state: Mutex::new(State {
                window_start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now.
    pub fn check(&self) -> Verdict {
        self.check_at(Instant::now())
    }

    /// [`RateLimit::check`] at a given time (for tests).
    pub fn check_at(&self, now: Instant) -> Verdict {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            s.window_start = Some(now);
            s.logged = 0;
        }
        if s.logged >= self.per_window {
            s.suppressed = s.suppressed.saturating_add(1);
            return Verdict::Suppress;
        }
        s.logged += 1;
        Verdict::Log {
            suppressed: std::mem::take(&mut s.suppressed),
        }
    }
}

/// `tracing::<level>!` for a line a guest can trigger, limited per call site to
/// [`LINES_PER_SECOND`](crate::devices::ratelimit::LINES_PER_SECOND):
/// `limited!(warn, error = %e, "virtio-rng: getrandom failed")`.
#[macro_export]
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::devices::ratelimit::RateLimit =
            $crate::devices::ratelimit::RateLimit::new(
                $crate::devices::ratelimit::LINES_PER_SECOND,
            );
        // A level nobody listens to costs no lock and counts nothing.
        if ::tracing::enabled!($crate::__limited_level!($level)) {
            if let $crate::devices::ratelimit::Verdict::Log { suppressed } = LIMIT.check() {
                if suppressed > 0 {
                    ::tracing::$level!(
                        suppressed,
                        "{suppressed} more lines like the next were suppressed"
                    );
                }
                ::tracing::$level!($($arg)+);
            }
        }
    }};
}

/// The `tracing::Level` for a level macro's name (for [`limited!`](crate::limited)).
#[doc(hidden)]
#[macro_export]
macro_rules! __limited_level {
    (error) => {
        ::tracing::Level::ERROR
    };
    (warn) => {
        ::tracing::Level::WARN
    };
    (info) => {
        ::tracing::Level::INFO
    };
    (debug) => {
        ::tracing::Level::DEBUG
    };
    (trace) => {
        ::tracing::Level::TRACE
    };
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn ten_thousand_triggers_in_one_second_pass_the_budget_then_one_summary() {
        let limit = RateLimit::new(LINES_PER_SECOND);
        let t0 = Instant::now();
        let logged = (0..10_000)
            .filter(|_| limit.check_at(t0) != Verdict::Suppress)
            .count();
        assert_eq!(logged, LINES_PER_SECOND as usize);
        assert_eq!(
            limit.check_at(t0 + Duration::from_millis(999)),
            Verdict::Suppress
        );
        assert_eq!(
            limit.check_at(t0 + WINDOW),
            Verdict::Log {
                suppressed: 10_000 - u64::from(LINES_PER_SECOND) + 1
            }
        );
        assert_eq!(limit.check_at(t0 + WINDOW), Verdict::Log { suppressed: 0 });
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn guest_triggered(i: u32) {
        crate::limited!(warn, i, "a guest did something odd");
    }

    #[test]
    fn ten_thousand_guest_triggered_warnings_log_a_bounded_number_of_lines() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let start = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10_000 {
                guest_triggered(i);
            }
        });
        let windows = start.elapsed().as_secs() + 1;
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines = text.lines().count() as u64;
        assert!(lines >= u64::from(LINES_PER_SECOND), "{text}");
        assert!(
            lines <= windows * (u64::from(LINES_PER_SECOND) + 1),
            "{lines} lines in {windows} s:\n{text}"
        );
    }
}
