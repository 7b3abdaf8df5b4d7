//! Events go to the appliance from a thread of their own, in the order they happened, so the
//! tools of a 60-step layout never wait for HTTP round trips (or for an appliance that is
//! briefly away): each event carries the uptime it was taken at, so sending it late loses
//! nothing.

use std::sync::mpsc;
use std::thread::{self, sleep};

use metalcast_proto::{EventReport, Level, Phase};
use tracing::warn;

use crate::appliance::{Appliance, chain, with_retry};
use crate::backoff::Backoff;
use crate::discover;

enum Message {
    Event(EventReport),
    /// Answered once every earlier event was sent or dropped.
    Flush(mpsc::Sender<()>),
}

/// The sending end. Events are sent one by one, each retried like any call to the appliance
/// ([`with_retry`]); one the appliance refuses is logged and dropped, it never stops the node.
pub struct EventQueue {
    tx: mpsc::Sender<Message>,
}

impl EventQueue {
    /// Starts the sending thread.
    pub fn start(api: Appliance, mut backoff: Backoff) -> Self {
        let (tx, rx) = mpsc::channel::<Message>();
        thread::spawn(move || {
            for message in rx {
                match message {
                    Message::Event(event) => send(&api, &mut backoff, &event),
                    // The flusher may have stopped waiting; nothing to tell then.
                    Message::Flush(done) => drop(done.send(())),
                }
            }
        });
        Self { tx }
    }

    /// Queues `event` and returns at once.
    pub fn push(&self, event: EventReport) {
        if let Err(mpsc::SendError(Message::Event(e))) = self.tx.send(Message::Event(event)) {
            // Only if the thread is gone, which a panic (an abort in the agent) would cause.
            warn!(
                "event {:?} not recorded: the event sender stopped",
                e.message
            );
        }
    }

    /// Queues an event stamped with the uptime now.
    pub fn record(&self, phase: Phase, level: Level, message: String) {
        self.push(EventReport {
            phase,
            level,
            message,
            uptime_secs: discover::uptime(),
        });
    }

    /// Waits until every event queued so far has been sent or dropped.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            // An error means the thread is gone, so there is nothing left to wait for.
            let _ = wait.recv();
        }
    }
}

fn send(api: &Appliance, backoff: &mut Backoff, event: &EventReport) {
    let what = format!("sending event {:?}", event.message);
    if let Err(e) = with_retry(&what, backoff, &mut sleep, || api.send_event(event)) {
        warn!("event {:?} not recorded: {}", event.message, chain(&e));
        if let Some(hint) = e.hint() {
            warn!("{hint}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::appliance::tests::{FakeAppliance, NO_CONTENT};

    fn event(n: usize) -> EventReport {
        EventReport {
            phase: Phase::Layout,
            level: Level::Info,
            message: format!("step {n}/60"),
            uptime_secs: Some(n as f64),
        }
    }

    #[test]
    fn queued_events_do_not_wait_for_the_appliance_and_arrive_in_order() {
        let opened = Arc::new(AtomicBool::new(false));
        let gate = {
            let opened = opened.clone();
            move || {
                thread::sleep(Duration::from_millis(300));
                opened.store(true, Ordering::SeqCst);
            }
        };
        let fake = FakeAppliance::start_after(gate, vec![NO_CONTENT; 60]);
        let queue = EventQueue::start(fake.client(), Backoff::for_api());
        for n in 1..=60 {
            queue.push(event(n));
        }
        assert!(
            !opened.load(Ordering::SeqCst),
            "queuing waited for the appliance to answer"
        );
        queue.flush();
        assert!(opened.load(Ordering::SeqCst));
        let bodies: Vec<EventReport> = fake
            .requests
            .try_iter()
            .map(|r| serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap())
            .collect();
        assert_eq!(bodies, (1..=60).map(event).collect::<Vec<_>>());
    }

    #[test]
    fn a_refused_event_is_dropped_and_the_next_one_still_goes() {
        let fake = FakeAppliance::start(vec![
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            NO_CONTENT,
        ]);
        let queue = EventQueue::start(fake.client(), Backoff::for_api());
        queue.push(event(1));
        queue.push(event(2));
        queue.flush();
        let seen: Vec<String> = fake.requests.try_iter().collect();
        assert_eq!(seen.len(), 2);
        assert!(seen[1].contains("step 2/60"), "{}", seen[1]);
    }
}
