//! Task events to containerd: TaskCreate, TaskStart, TaskExit, ... sent
//! with `containerd.services.events.ttrpc.v1.Events/Forward` on containerd's
//! ttrpc socket ($TTRPC_ADDRESS, given to the shim at start).
//!
//! Publishing never blocks a task operation: events go into a queue that
//! one thread drains in order, connecting (and reconnecting) as needed and
//! disconnecting when the queue has been idle for a while; an
//! event containerd cannot take within [`DELIVERY_BUDGET`] (retried with a
//! growing pause) is logged and dropped.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::topics::*;
use containerd_shim_protos::{ttrpc, EventsClient};

use super::convert::timestamp;

/// How long one event may wait for containerd: long enough to span a
/// containerd restart (an exit it never hears of leaves a task RUNNING),
/// short enough that a containerd gone for good does not hold the queue.
const DELIVERY_BUDGET: Duration = Duration::from_secs(30);
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LONGEST_RETRY: Duration = Duration::from_secs(5);
/// How long the connection to containerd outlives the last event. ttrpc's
/// sync client wakes every 10 ms while connected (its receiver polls with
/// a 10 ms timeout), so an idle pod keeps none; events come in bursts
/// (create, start; exit, delete), and a burst shares one connection.
const KEEP_CONNECTION: Duration = Duration::from_secs(2);

/// A task event and its topic.
pub enum TaskEvent {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Oom(TaskOOM),
    Delete(TaskDelete),
    Paused(TaskPaused),
    Resumed(TaskResumed),
}

impl TaskEvent {
    fn topic_and_message(&self) -> (&'static str, &dyn MessageDyn) {
        match self {
            TaskEvent::Create(e) => (TASK_CREATE_EVENT_TOPIC, e),
            TaskEvent::Start(e) => (TASK_START_EVENT_TOPIC, e),
            TaskEvent::Exit(e) => (TASK_EXIT_EVENT_TOPIC, e),
            TaskEvent::ExecAdded(e) => (TASK_EXEC_ADDED_EVENT_TOPIC, e),
            TaskEvent::ExecStarted(e) => (TASK_EXEC_STARTED_EVENT_TOPIC, e),
            TaskEvent::Oom(e) => (TASK_OOM_EVENT_TOPIC, e),
            TaskEvent::Delete(e) => (TASK_DELETE_EVENT_TOPIC, e),
            TaskEvent::Paused(e) => (TASK_PAUSED_EVENT_TOPIC, e),
            TaskEvent::Resumed(e) => (TASK_RESUMED_EVENT_TOPIC, e),
        }
    }
}

/// Packs a message as containerd's typeurl does: the type URL is the
/// message's full protobuf name.
pub fn to_any(msg: &dyn MessageDyn) -> Any {
    let mut any = Any::new();
    any.type_url = msg.descriptor_dyn().full_name().to_string();
    any.value = msg.write_to_bytes_dyn().unwrap_or_default();
    any
}

#[derive(Clone)]
pub struct Publisher {
    queue: Sender<TaskEvent>,
}

impl Publisher {
    /// Starts the publishing thread for containerd at `ttrpc_address`
    /// (None: events are only logged, e.g. `husk run`).
    pub fn start(ttrpc_address: Option<String>, namespace: String) -> Self {
        let (queue, rx) = channel();
        let spawned = std::thread::Builder::new()
            .name("husk-events".into())
            .spawn(move || drain(rx, ttrpc_address, &namespace));
        if let Err(e) = spawned {
            tracing::error!("cannot start the event publisher: {e}");
        }
        Self { queue }
    }

    pub fn publish(&self, event: TaskEvent) {
        let _ = self.queue.send(event);
    }
}

/// The next event; the connection to containerd is dropped once the queue
/// has been idle for [`KEEP_CONNECTION`].
fn next_event(rx: &Receiver<TaskEvent>, client: &mut Option<EventsClient>) -> Option<TaskEvent> {
    match rx.recv_timeout(KEEP_CONNECTION) {
        Ok(event) => Some(event),
        Err(RecvTimeoutError::Timeout) => {
            *client = None;
            rx.recv().ok()
        }
        Err(RecvTimeoutError::Disconnected) => None,
    }
}

fn drain(rx: Receiver<TaskEvent>, address: Option<String>, namespace: &str) {
    let mut client: Option<EventsClient> = None;
    while let Some(event) = next_event(&rx, &mut client) {
        let (topic, msg) = event.topic_and_message();
        tracing::debug!(topic, "task event");
        let Some(address) = &address else { continue };
        let mut req = ForwardRequest::new();
        let mut env = Envelope::new();
        env.timestamp = Some(timestamp(SystemTime::now())).into();
        env.namespace = namespace.to_string();
        env.topic = topic.to_string();
        env.event = Some(to_any(msg)).into();
        req.envelope = Some(env).into();
        if !forward(&mut client, address, &req) {
            tracing::error!(
                topic,
                "dropped a task event containerd did not take within {DELIVERY_BUDGET:?}"
            );
        }
    }
}

/// Sends `req`, (re)connecting as needed; false once the budget is spent.
fn forward(client: &mut Option<EventsClient>, address: &str, req: &ForwardRequest) -> bool {
    let topic = req.envelope.topic.as_str();
    let deadline = std::time::Instant::now() + DELIVERY_BUDGET;
    let mut pause = FIRST_RETRY;
    let mut warned = false;
    loop {
        let error = match client.as_ref() {
            Some(c) => {
                let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
                match c.forward(ctx, req) {
                    Ok(_) => return true,
                    Err(e) => {
                        *client = None;
                        format!("forwarding an event to containerd: {e}")
                    }
                }
            }
            None => match ttrpc::Client::connect(&format!("unix://{address}")) {
                Ok(c) => {
                    *client = Some(EventsClient::new(c));
                    continue;
                }
                Err(e) => format!("cannot reach containerd's events service: {e}"),
            },
        };
        if !warned {
            tracing::warn!(topic, address, "{error}; retrying");
            warned = true;
        }
        if std::time::Instant::now() + pause > deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(LONGEST_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
    use containerd_shim_protos::{create_events, Events};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Instant;

    /// containerd's events service, passing on each event's topic.
    struct ContainerdEvents(Mutex<mpsc::Sender<String>>);

    impl Events for ContainerdEvents {
        fn forward(&self, _: &ttrpc::TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            let _ = self.0.lock().unwrap().send(req.envelope.topic.clone());
            Ok(Empty::new())
        }
    }

    /// Threads named like the publisher's: it and, while connected, the
    /// ttrpc client's sender and receiver (Linux names a new thread after
    /// the one that made it).
    fn publisher_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "husk-events")
            .count()
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + KEEP_CONNECTION * 5;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn events_reach_containerd_and_an_idle_publisher_keeps_no_connection() {
        // The socket goes with the directory, even when the test fails.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let (tx, topics) = mpsc::channel();
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .unwrap()
            .register_service(create_events(Arc::new(ContainerdEvents(Mutex::new(tx)))));
        server.start().unwrap();

        let publisher = Publisher::start(Some(path.display().to_string()), "ns".into());
        for _ in 0..2 {
            publisher.publish(TaskEvent::Start(TaskStart::new()));
            let topic = topics.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(topic, TASK_START_EVENT_TOPIC);
            assert!(publisher_threads() >= 2, "no connection while publishing");
            // Idle: the connection (and its polling receiver) goes.
            wait_for("the connection to close", || publisher_threads() == 1);
        }
        server.shutdown();
    }
}
