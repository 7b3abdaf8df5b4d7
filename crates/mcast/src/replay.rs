//! Sliding-window replay detection over sequence numbers (as in IPsec's anti-replay window).

const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// Accepts each sequence number once, and none older than the newest `WINDOW`.
#[derive(Clone, Debug)]
pub(crate) struct ReplayWindow {
    highest: u64,
    seen: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            highest: 0,
            seen: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// True the first time `seq` is offered inside the window; sequence numbers start at 1.
    pub(crate) fn accept(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            if seq - self.highest >= WINDOW {
                self.seen = [0; WORDS];
            } else {
                for s in self.highest + 1..seq {
                    self.clear(s);
                }
            }
            self.highest = seq;
            self.set(seq);
            return true;
        }
        if self.highest - seq >= WINDOW || self.is_set(seq) {
            return false;
        }
        self.set(seq);
        true
    }

    pub(crate) fn highest(&self) -> u64 {
        self.highest
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Self::slot(seq);
        self.seen[w] |= b;
    }

    fn clear(&mut self, seq: u64) {
        let (w, b) = Self::slot(seq);
        self.seen[w] &= !b;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (w, b) = Self::slot(seq);
        self.seen[w] & b != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_number_once_and_nothing_too_old() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(5000));
        assert!(!w.accept(5000));
        assert!(w.accept(4990), "late but inside the window");
        assert!(!w.accept(4990));
        assert!(w.accept(5001));
        assert!(!w.accept(5001 - WINDOW), "older than the window");
        assert!(w.accept(5002 - WINDOW));
        // A jump past the window forgets everything older.
        assert!(w.accept(20_000));
        assert!(!w.accept(5001));
        assert_eq!(w.highest(), 20_000);
    }

    #[test]
    fn slots_reused_after_wrap_start_clear() {
        let mut w = ReplayWindow::default();
        for s in 1..=3000 {
            if s % 3 != 0 {
                assert!(w.accept(s));
            }
        }
        // 2997 was never seen and is inside the window, though its slot held 2997 - WINDOW.
        assert!(w.accept(2997));
        assert!(!w.accept(2998));
    }
}
