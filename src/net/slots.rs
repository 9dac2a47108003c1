//! An IO thread's connections, and the policies applied over them. Each
//! connection has a slot, found by its token (the epoll data): present
//! (its IO thread owns it) or lent (an app thread has it while its request
//! runs). The table says which connections shutdown closes and which have
//! outlived a timeout; the IO thread's loop (`io_thread.rs`) acts on that.

use std::time::{Duration, Instant};

use super::conn::Conn;

enum Slot {
    Free,
    Present(Box<Conn>),
    /// Lent to an app thread with a request; comes back by the mailbox.
    /// `events`: epoll reported the socket while it was away (its edge is
    /// gone, so it must be read when it comes back); `hangup`: one of those
    /// reports said the peer shut its side.
    Lent {
        events: bool,
        hangup: bool,
    },
}

/// What epoll said of a lent connection while it was away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WhileLent {
    pub events: bool,
    pub hangup: bool,
}

#[derive(Default)]
pub(crate) struct Slots {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Connections present or lent.
    live: usize,
}

/// Whether a present connection is between requests. `served` only grows
/// while the connection is lent, so this holds from `put_back` to `lend`
/// or `remove`, where it is counted and uncounted.
fn between_requests(conn: &Conn) -> bool {
    conn.served > 0
}

impl Slots {
    /// A token for a new connection (a free slot, or a new one).
    pub(crate) fn reserve(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::Free);
            self.slots.len() - 1
        })
    }

    /// Gives back a token reserved for a connection that did not make it.
    pub(crate) fn unreserve(&mut self, token: usize) {
        self.free.push(token);
    }

    /// A new connection, in the slot reserved for it.
    pub(crate) fn insert(&mut self, token: usize, conn: Box<Conn>) {
        self.slots[token] = Slot::Present(conn);
        self.live += 1;
    }

    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// The present connections between requests (what the `keep_alive`
    /// gauge counts), for the tests.
    #[cfg(test)]
    pub(crate) fn between_requests(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Present(c) if between_requests(c)))
            .count()
    }

    /// Moves the `keep_alive` gauge for `conn` arriving (+1) or leaving (-1).
    fn count_between(conn: &Conn, delta: i64) {
        if between_requests(conn) {
            crate::stats::gauge(crate::stats::KEEP_ALIVE, delta);
        }
    }

    /// The connection, if its IO thread has it.
    pub(crate) fn present(&mut self, token: usize) -> Option<&mut Conn> {
        match self.slots.get_mut(token) {
            Some(Slot::Present(conn)) => Some(conn),
            _ => None,
        }
    }

    /// Notes an epoll report for a lent connection; false if it is not lent.
    pub(crate) fn note_while_lent(&mut self, token: usize, readable: bool, shut: bool) -> bool {
        match self.slots.get_mut(token) {
            Some(Slot::Lent { events, hangup }) => {
                *events |= readable;
                *hangup |= shut;
                true
            }
            _ => false,
        }
    }

    /// Takes a present connection out to lend it.
    pub(crate) fn lend(&mut self, token: usize) -> Option<Box<Conn>> {
        let lent = Slot::Lent {
            events: false,
            hangup: false,
        };
        match std::mem::replace(self.slots.get_mut(token)?, lent) {
            Slot::Present(conn) => {
                Self::count_between(&conn, -1);
                Some(conn)
            }
            other => {
                self.slots[token] = other;
                None
            }
        }
    }

    /// Puts a connection back in its slot (it came home, or was never
    /// lent after all); returns what epoll said while it was away.
    pub(crate) fn put_back(&mut self, conn: Box<Conn>) -> WhileLent {
        let token = conn.token;
        let seen = match self.slots[token] {
            Slot::Lent { events, hangup } => WhileLent { events, hangup },
            _ => WhileLent::default(),
        };
        Self::count_between(&conn, 1);
        self.slots[token] = Slot::Present(conn);
        seen
    }

    /// Removes a present connection (to close it); frees its slot.
    pub(crate) fn remove(&mut self, token: usize) -> Option<Box<Conn>> {
        match std::mem::replace(self.slots.get_mut(token)?, Slot::Free) {
            Slot::Present(conn) => {
                self.free.push(token);
                self.live -= 1;
                Self::count_between(&conn, -1);
                Some(conn)
            }
            other => {
                self.slots[token] = other;
                None
            }
        }
    }

    /// During shutdown, the connections between requests that `drain`
    /// closes at `now`, shutdown having begun at `began`.
    pub(crate) fn drained(&self, drain: &Drain, began: Instant, now: Instant) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(t, s)| {
                matches!(s, Slot::Present(c) if drain.closes(c, began, now)).then_some(t)
            })
            .collect()
    }

    /// The present connection with output that has gone longest without
    /// progress, if that is at least `quiet`: the one to close when no
    /// budget has room for a response (see `net::park`).
    pub(crate) fn slowest(&self, now: Instant, quiet: Duration) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(t, s)| match s {
                Slot::Present(c) if c.has_output() && !c.is_hijacked() => Some((t, c.last_write)),
                _ => None,
            })
            .filter(|(_, last)| now.saturating_duration_since(*last) >= quiet)
            .min_by_key(|(_, last)| *last)
            .map(|(t, _)| t)
    }

    /// The present connections past a timeout at `now`: those to close,
    /// and those to answer 408 (queued on them here).
    pub(crate) fn expired(&mut self, timeouts: &Timeouts, now: Instant) -> Vec<(usize, Expired)> {
        let mut expired = Vec::new();
        for (token, slot) in self.slots.iter_mut().enumerate() {
            let Slot::Present(conn) = slot else { continue };
            match timeouts.check(conn, now) {
                Expired::No => {}
                Expired::Answer408 => {
                    conn.queue_error(408, "Request Timeout\n");
                    expired.push((token, Expired::Answer408));
                }
                Expired::Close => expired.push((token, Expired::Close)),
            }
        }
        expired
    }
}

/// How shutdown closes connections that are between requests. Closing
/// one races its client: a request sent as the close happens is reset,
/// and the client cannot tell whether it ran. So a connection is closed
/// only when its client has gone quiet, and a request that does arrive is
/// answered, with `Connection: close`, like any other while stopping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drain {
    /// A connection never used: its client has no earlier response to
    /// tell it the connection worked, so its first request is waited for
    /// this long after shutdown begins.
    pub fresh_grace: Duration,
    /// A keep-alive connection: closed once this long has passed since
    /// its last response with no new request. A client in a request loop
    /// sends its next one well within it and gets its answer.
    pub quiet: Duration,
}

impl Drain {
    pub(crate) fn closes(&self, conn: &Conn, began: Instant, now: Instant) -> bool {
        if !conn.is_idle() {
            return false;
        }
        if conn.served == 0 {
            now.saturating_duration_since(began) >= self.fresh_grace
        } else {
            now.saturating_duration_since(conn.idle_since) >= self.quiet
        }
    }
}

/// The timeouts an IO thread enforces. None of them involves an app thread:
/// a connection is only checked while its IO thread owns it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// Keep-alive: between requests.
    pub idle: Duration,
    /// From a request's first byte to the end of its head.
    pub header: Duration,
    /// Between two reads of a request body.
    pub body: Duration,
    /// Without progress writing a pending response.
    pub write: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    No,
    Close,
    Answer408,
}

impl Timeouts {
    pub(crate) fn check(&self, conn: &Conn, now: Instant) -> Expired {
        if conn.has_output() {
            return if now - conn.last_write > self.write {
                Expired::Close
            } else {
                Expired::No
            };
        }
        if conn.reading_body() {
            return if now - conn.last_read > self.body {
                Expired::Answer408
            } else {
                Expired::No
            };
        }
        match conn.request_started {
            // No PROXY protocol header or TLS handshake in time: closed
            // without a response.
            Some(started) if now - started > self.header && conn.awaits_preamble() => {
                Expired::Close
            }
            Some(started) if now - started > self.header => Expired::Answer408,
            None if conn.is_idle() && now - conn.idle_since > self.idle => Expired::Close,
            _ => Expired::No,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Limits;
    use crate::net::conn::tests::pair;
    use crate::net::conn::Progress;

    const T: Timeouts = Timeouts {
        idle: Duration::from_secs(20),
        header: Duration::from_secs(10),
        body: Duration::from_secs(30),
        write: Duration::from_secs(40),
    };

    #[test]
    fn a_connection_is_between_requests_from_its_return_to_its_next_lending() {
        let mut slots = Slots::default();
        let token = slots.reserve();
        let (mut conn, _client) = pair();
        conn.token = token;
        slots.insert(token, Box::new(conn));
        assert_eq!(
            slots.between_requests(),
            0,
            "a fresh connection served none"
        );
        let mut lent = slots.lend(token).expect("present");
        lent.served += 1;
        slots.put_back(lent);
        assert_eq!(slots.between_requests(), 1, "home after its first request");
        let mut lent = slots.lend(token).expect("present");
        assert_eq!(slots.between_requests(), 0, "with an app thread again");
        lent.served += 1;
        slots.put_back(lent);
        assert_eq!(slots.between_requests(), 1);
        assert!(slots.remove(token).is_some());
        assert_eq!(slots.between_requests(), 0, "closed");
    }

    #[test]
    fn the_slowest_is_the_one_with_output_stalled_longest() {
        let mut slots = Slots::default();
        let now = Instant::now();
        let mut clients = Vec::new();
        let mut add = |output: bool, stalled_ms: u64| {
            let token = slots.reserve();
            let (mut conn, client) = pair();
            conn.token = token;
            if output {
                conn.append(&[b"unsent"]);
            }
            conn.last_write = now - Duration::from_millis(stalled_ms);
            slots.insert(token, Box::new(conn));
            clients.push(client);
            token
        };
        let _idle = add(false, 9_000);
        let _recent = add(true, 500);
        let stalled = add(true, 5_000);
        let _less = add(true, 3_000);
        let quiet = Duration::from_secs(1);
        assert_eq!(slots.slowest(now, quiet), Some(stalled));
        slots.remove(stalled);
        assert_eq!(slots.slowest(now, quiet), Some(3), "then the next");
        slots.remove(3);
        assert_eq!(slots.slowest(now, quiet), None, "none stalled a second");
    }

    #[test]
    fn a_connection_is_lent_put_back_and_removed_by_its_token() {
        let mut slots = Slots::default();
        let token = slots.reserve();
        let (mut conn, _client) = pair();
        conn.token = token;
        slots.insert(token, Box::new(conn));
        assert_eq!(slots.live(), 1);
        let lent = slots.lend(token).expect("present");
        assert!(slots.present(token).is_none() && slots.lend(token).is_none());
        assert!(slots.note_while_lent(token, true, false));
        assert!(slots.remove(token).is_none(), "a lent connection stays");
        let seen = slots.put_back(lent);
        assert_eq!(
            seen,
            WhileLent {
                events: true,
                hangup: false
            }
        );
        assert!(!slots.note_while_lent(token, true, true), "no longer lent");
        assert!(slots.remove(token).is_some());
        assert_eq!(slots.live(), 0);
        assert_eq!(slots.between_requests(), 0);
        assert_eq!(slots.reserve(), token, "the slot is reused");
    }

    #[test]
    fn shutdown_closes_quiet_keep_alive_connections_then_fresh_ones() {
        const D: Drain = Drain {
            fresh_grace: Duration::from_secs(2),
            quiet: Duration::from_secs(1),
        };
        let mut slots = Slots::default();
        let mut tokens = Vec::new();
        let mut clients = Vec::new();
        let began = Instant::now();
        for served in [0, 1, 1] {
            let token = slots.reserve();
            let (mut conn, client) = pair();
            conn.token = token;
            conn.served = served;
            slots.insert(token, Box::new(conn));
            tokens.push(token);
            clients.push(client);
        }
        // The third just had its response when shutdown began; the second
        // has been quiet for a while.
        if let Some(Slot::Present(c)) = slots.slots.get_mut(tokens[1]) {
            c.idle_since = began - Duration::from_secs(5);
        }
        if let Some(Slot::Present(c)) = slots.slots.get_mut(tokens[2]) {
            c.idle_since = began;
        }
        let at = |secs: u64| began + Duration::from_millis(secs);
        assert_eq!(slots.drained(&D, began, at(0)), vec![tokens[1]]);
        assert_eq!(
            slots.drained(&D, began, at(1_000)),
            vec![tokens[1], tokens[2]]
        );
        assert_eq!(slots.drained(&D, began, at(2_000)), tokens);
    }

    #[test]
    fn a_connection_with_a_request_under_way_is_never_drained() {
        const D: Drain = Drain {
            fresh_grace: Duration::ZERO,
            quiet: Duration::ZERO,
        };
        let (mut conn, mut client) = pair();
        conn.served = 1;
        std::io::Write::write_all(&mut client, b"GET / HTTP/1.1\r\nHo").expect("write");
        let mut scratch = vec![0u8; 4096];
        let _ = conn.fill(&mut scratch, 1 << 20);
        let _ = conn.advance(&Limits::default());
        let now = Instant::now();
        assert!(!D.closes(&conn, now, now + Duration::from_secs(60)));
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout() {
        let (c, _client) = pair();
        let now = c.idle_since;
        assert!(matches!(
            T.check(&c, now + Duration::from_secs(19)),
            Expired::No
        ));
        assert!(matches!(
            T.check(&c, now + Duration::from_secs(21)),
            Expired::Close
        ));
    }

    #[test]
    fn a_slow_head_gets_408_after_the_header_timeout() {
        use std::io::Write;
        let (mut c, mut client) = pair();
        client.write_all(b"GET / HT").unwrap();
        let mut scratch = vec![0; 1024];
        let until = Instant::now() + Duration::from_secs(5);
        while c.request_started.is_none() {
            assert!(Instant::now() < until, "the bytes never came");
            c.fill(&mut scratch, usize::MAX).unwrap();
        }
        let started = c.request_started.unwrap();
        assert!(matches!(
            T.check(&c, started + Duration::from_secs(9)),
            Expired::No
        ));
        assert!(matches!(
            T.check(&c, started + Duration::from_secs(11)),
            Expired::Answer408
        ));
    }

    #[test]
    fn a_stalled_body_gets_408_after_the_body_timeout() {
        use std::io::Write;
        let (mut c, mut client) = pair();
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        let mut scratch = vec![0; 1024];
        let until = Instant::now() + Duration::from_secs(5);
        while !c.reading_body() {
            assert!(Instant::now() < until, "the head never came");
            c.fill(&mut scratch, usize::MAX).unwrap();
            assert!(matches!(
                c.advance(&Limits::default()),
                Ok(Progress::Pending)
            ));
        }
        let last = c.last_read;
        // The header timeout no longer applies once the head is complete.
        assert!(matches!(
            T.check(&c, last + Duration::from_secs(29)),
            Expired::No
        ));
        assert!(matches!(
            T.check(&c, last + Duration::from_secs(31)),
            Expired::Answer408
        ));
    }

    #[test]
    fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
        let (mut c, _client) = pair();
        c.queue(vec![b'x'; 64 << 20]);
        assert!(!c.flush().unwrap(), "64 MiB cannot fit in socket buffers");
        let last = c.last_write;
        assert!(matches!(
            T.check(&c, last + Duration::from_secs(39)),
            Expired::No
        ));
        assert!(matches!(
            T.check(&c, last + Duration::from_secs(41)),
            Expired::Close
        ));
    }
}
