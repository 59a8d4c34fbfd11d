//! Happenings a process reports both as a log line and as a metric. Each is one typed value
//! whose [`InternalEvent::emit`] writes the two together, so logs and metrics never drift
//! apart (the idea of Vector's `internal_events`). Each service lists its own in an
//! `internal_events.rs`; call sites build the value and emit it, nothing else.

/// One happening, emitted as its log line and its metric together.
pub trait InternalEvent {
    /// Writes the log line and updates the metric.
    fn emit(self);
}

/// What an internal event says went wrong: anything printable (an error, a message).
pub trait Reason: std::fmt::Display + std::fmt::Debug {}

impl<T: std::fmt::Display + std::fmt::Debug + ?Sized> Reason for T {}
