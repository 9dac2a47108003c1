//! The per-request timeout. A thread of its own (no Ruby, no GVL) looks at
//! the requests in flight every 100 ms; one that has run longer than the
//! timeout without sending anything gets a 503 from here, and its
//! connection goes back to the IO thread. The app thread keeps running;
//! whatever it answers later is dropped. An app thread still busy past the
//! hard limit is reported as stuck (a cluster worker then gets replaced).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::exchange::Exchange;
use crate::http::response::service_unavailable;
use crate::net::conn::Afterwards;
use crate::net::{Job, Shared};
use crate::process::supervise;

const SCAN_EVERY: Duration = Duration::from_millis(100);

struct InFlight {
    exchange: Weak<Exchange>,
    started: Instant,
    answered: bool,
}

/// Requests in flight, and the thread that times them out.
pub struct Watchdog {
    /// Answer 503 past this (None: never).
    timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    in_flight: Mutex<Vec<InFlight>>,
    /// An app thread has been busy past the hard limit.
    stuck: AtomicBool,
    /// The engine's queue: requests still queued past the timeout are
    /// answered too.
    shared: Arc<Shared>,
    stop: AtomicBool,
}

impl Watchdog {
    pub fn start(
        timeout: Option<Duration>,
        hard_timeout: Option<Duration>,
        shared: Arc<Shared>,
    ) -> std::io::Result<(Arc<Self>, JoinHandle<()>)> {
        let faults = shared.faults.clone();
        let dog = Arc::new(Watchdog {
            timeout,
            hard_timeout,
            in_flight: Mutex::new(Vec::new()),
            stuck: AtomicBool::new(false),
            shared,
            stop: AtomicBool::new(false),
        });
        let watcher = dog.clone();
        let handle = supervise::spawn("butterflies-watchdog".into(), faults, move || {
            watcher.run();
            Ok(())
        })?;
        Ok((dog, handle))
    }

    pub fn watch(&self, exchange: &Arc<Exchange>) {
        let entry = InFlight {
            exchange: Arc::downgrade(exchange),
            started: Instant::now(),
            answered: false,
        };
        self.lock().push(entry);
    }

    pub fn is_stuck(&self) -> bool {
        self.stuck.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(self: Arc<Self>) {
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(SCAN_EVERY);
            let now = Instant::now();
            let mut expired = Vec::new();
            let mut stuck = false;
            self.lock().retain_mut(|entry| {
                let Some(exchange) = entry.exchange.upgrade() else {
                    return false;
                };
                let age = now - entry.started;
                if !entry.answered && self.timeout.is_some_and(|t| age > t) {
                    entry.answered = true;
                    expired.push(exchange.clone());
                }
                stuck |= self.hard_timeout.is_some_and(|hard| age > hard);
                true
            });
            self.stuck.store(stuck, Ordering::Relaxed);
            let Some(timeout) = self.timeout else {
                continue;
            };
            for exchange in expired {
                if let Some(job) = exchange.take_job_if_unanswered() {
                    answer_timeout(job, timeout);
                }
            }
            // Still queued at the deadline: every app thread is busy.
            for job in self.shared.claims.take_expired(timeout) {
                answer_timeout(job, timeout);
            }
        }
    }
}

/// Answers 503 in the app's place (the app has not started answering, or
/// the request never left the queue).
fn answer_timeout(mut job: Job, timeout: Duration) {
    job.request.log_refused(503);
    let head = &job.request.head;
    crate::log_err!(
        "butterflies: {} {} timed out after {:.1}s; answered 503",
        String::from_utf8_lossy(head.method()),
        String::from_utf8_lossy(head.path()),
        timeout.as_secs_f64()
    );
    let response = service_unavailable("Service Unavailable: the request timed out\n");
    if let Some(conn) = job.conn_mut() {
        conn.queue(response);
        let _ = conn.flush();
    }
    job.finish(Afterwards::CloseAfterWrite);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::net::handoff::testing::{job, DEADLINE};
    use crate::serve::Waker;
    use std::io::Read;

    #[test]
    fn an_unanswered_request_gets_503_at_its_timeout() {
        let shared = Arc::new(Shared::default());
        let timeout = Duration::from_millis(150);
        let (dog, thread) = Watchdog::start(Some(timeout), None, shared.clone()).unwrap();
        let (job, mut client, mailbox) = job("/stuck", shared);
        let ex = Arc::new(Exchange::new(
            job,
            Arc::new(Waker::new().unwrap()),
            DEADLINE,
        ));
        let started = Instant::now();
        dog.watch(&ex);
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut head = [0u8; 12];
        client.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 503");
        assert!(started.elapsed() >= timeout);
        assert!(ex.broken(), "the app's own answer is dropped");
        // The connection goes home once the 503 is written, which the
        // client may see first.
        assert!(mailbox
            .rx
            .recv_timeout(DEADLINE)
            .unwrap()
            .ends_after_write());
        dog.stop();
        thread.join().unwrap();
    }
}
