//! The epoch ticker: advances the engine's epoch every [`EPOCH_TICK`]
//! while at least one plugin call runs, and sleeps on a condition variable
//! otherwise, so an idle gateway does not wake a hundred times a second.
//!
//! Call deadlines only need the epoch to move while guest code runs: each
//! call arms its store one tick ahead (`set_epoch_deadline(1)`) and holds a
//! [`CallGuard`] for as long as it runs, which wakes the ticker if it slept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use wasmtime::{Engine, EngineWeak};

use super::EPOCH_TICK;

#[derive(Debug, Default)]
struct State {
    /// Plugin calls running now.
    active: usize,
    /// The thread waits on the condition variable (and needs a wake-up
    /// to tick again); a notify costs a system call, so only then.
    waiting: bool,
    stopped: bool,
}

/// The engine's epoch ticker, shared by every instance it serves.
#[derive(Debug, Default)]
pub struct Ticker {
    state: Mutex<State>,
    wake: Condvar,
    /// Epoch increments since start.
    ticks: AtomicU64,
}

/// Held while one plugin call runs; the ticker ticks while any is held.
#[derive(Debug)]
pub struct CallGuard(Arc<Ticker>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.active = state.active.saturating_sub(1);
    }
}

impl Ticker {
    /// Starts the ticker thread for `engine`; it ends when the engine is
    /// dropped or [`Ticker::stop`] is called.
    pub fn start(engine: &Engine) -> std::io::Result<Arc<Ticker>> {
        let ticker = Arc::new(Ticker::default());
        let weak = engine.weak();
        let run = ticker.clone();
        std::thread::Builder::new()
            .name("ferrule-epoch".into())
            .spawn(move || run.run(&weak))?;
        Ok(ticker)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self, engine: &EngineWeak) {
        loop {
            {
                let mut state = self.lock();
                while state.active == 0 && !state.stopped {
                    state.waiting = true;
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                    state.waiting = false;
                }
                if state.stopped {
                    return;
                }
            }
            std::thread::sleep(EPOCH_TICK);
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
            self.ticks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks a plugin call as running until the guard is dropped.
    pub fn call(self: &Arc<Self>) -> CallGuard {
        let mut state = self.lock();
        state.active += 1;
        if state.waiting {
            state.waiting = false;
            self.wake.notify_one();
        }
        CallGuard(self.clone())
    }

    /// Epoch increments since start (what the tests observe).
    #[cfg(test)]
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Ends the thread.
    pub fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        state.waiting = false;
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits up to 10 s for `ok`, polling; the condition is the test, the
    /// limit only stops a broken ticker from hanging it.
    fn eventually(ok: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        ok()
    }

    #[test]
    fn ticks_only_while_a_call_runs() {
        let engine = Engine::default();
        let ticker = Ticker::start(&engine).unwrap();
        std::thread::sleep(EPOCH_TICK * 10);
        assert_eq!(ticker.ticks(), 0, "no call ran, so no tick");

        let call = ticker.call();
        assert!(
            eventually(|| ticker.ticks() >= 3),
            "ticks while a call runs"
        );
        let second = ticker.call();
        drop(call);
        let before = ticker.ticks();
        assert!(
            eventually(|| ticker.ticks() > before),
            "still ticks while the second call runs"
        );
        drop(second);
        // At most the tick already under way lands after the last call ends.
        let settled = ticker.ticks() + 1;
        std::thread::sleep(EPOCH_TICK * 10);
        assert!(ticker.ticks() <= settled, "sleeps once no call runs");
        ticker.stop();
    }
}
