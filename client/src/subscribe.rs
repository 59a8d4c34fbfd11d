//! Subscriptions over Server-Sent Events (`GET /subscriptions/$all`,
//! `GET /subscriptions/streams/{id}`) as a [`Stream`](futures::Stream) of events that
//! reconnects by itself: after a dropped connection, a server that closed it (a slow
//! subscriber, a restart) or a silence longer than the idle timeout, it asks again with
//! `Last-Event-ID`, the id of the last message it had, so every event comes exactly once.

use std::time::Duration;

use esk_model::wire::CanonicalEvent;
use futures::stream::{self, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;

use crate::{retry_after, without_query, Client, ClientError, Events, ALL, SEGMENT};

/// How long a subscription may stay silent (the server sends heartbeats every 15 s by default)
/// before the client reconnects, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most bytes of one SSE message the client holds before giving up on the connection (an
/// event is at most a few MiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What a `$all` subscription selects: events of any of `types` (all when empty) in any of
/// `categories` (all when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Event types.
    pub types: Vec<String>,
    /// Categories (`Order` for the streams `Order-…`).
    pub categories: Vec<String>,
}

impl Filters {
    /// Every event.
    pub fn all() -> Self {
        Filters::default()
    }

    /// Only events of these types.
    pub fn types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Only events of the streams of these categories.
    pub fn categories<I: IntoIterator<Item = S>, S: Into<String>>(mut self, categories: I) -> Self {
        self.categories = categories.into_iter().map(Into::into).collect();
        self
    }

    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if !self.types.is_empty() {
            query.push(("types", self.types.join(",")));
        }
        if !self.categories.is_empty() {
            query.push(("categories", self.categories.join(",")));
        }
        query
    }
}

impl Client {
    /// Every event `filters` selects, from global position `from` on (`None`: only events
    /// indexed from now on), and then each new one as it is indexed; never ends by itself.
    /// Reconnects with `Last-Event-ID` as needed; ends after yielding an error that retrying
    /// cannot fix (a refused token or filter).
    pub fn subscribe_all(&self, filters: &Filters, from: Option<i64>) -> Events {
        let url = format!("{}/subscriptions/{ALL}", self.base);
        self.subscribe(url, filters.query(), from)
    }

    /// A stream's events from version `from` on (`None`: only new ones), then each new one;
    /// as [`Client::subscribe_all`].
    pub fn subscribe_stream(&self, stream_id: &str, from: Option<i64>) -> Events {
        let url = format!(
            "{}/subscriptions/streams/{}",
            self.base,
            percent_encoding::utf8_percent_encode(stream_id, SEGMENT)
        );
        self.subscribe(url, Vec::new(), from)
    }

    fn subscribe(
        &self,
        url: String,
        query: Vec<(&'static str, String)>,
        from: Option<i64>,
    ) -> Events {
        let state = Subscription {
            client: self.clone(),
            url,
            query,
            from,
            last_id: None,
            response: None,
            parser: Parser::default(),
            failures: 0,
            done: false,
        };
        stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed()
    }
}

/// One subscription's connection and place.
struct Subscription {
    client: Client,
    url: String,
    query: Vec<(&'static str, String)>,
    from: Option<i64>,
    /// The id of the last message received (an event's, or an id-only message's).
    last_id: Option<String>,
    response: Option<reqwest::Response>,
    parser: Parser,
    failures: u32,
    done: bool,
}

impl Subscription {
    /// The next event, or the error that ends the subscription; `None` after that.
    async fn next(&mut self) -> Option<Result<CanonicalEvent, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            if self.response.is_none() {
                match self.connect().await {
                    Ok(response) => self.response = Some(response),
                    Err(e) if e.is_retryable() => {
                        self.back_off(e.retry_after()).await;
                        continue;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            while let Some(message) = self.parser.next_message() {
                if let Some(id) = message.id {
                    self.last_id = Some(id);
                }
                // An id-only message moves the place; comments (heartbeats, the reason the
                // server closes) carry nothing to yield.
                let Some(data) = message.data else { continue };
                self.failures = 0;
                return Some(serde_json::from_str(&data).map_err(|e| {
                    self.done = true;
                    ClientError::unexpected(
                        StatusCode::OK,
                        &self.url,
                        data.as_bytes(),
                        format!("an SSE message is not an event: {e}"),
                    )
                }));
            }
            let Some(response) = self.response.as_mut() else {
                continue;
            };
            let idle = self.client.idle_timeout;
            match tokio::time::timeout(idle, response.chunk()).await {
                Ok(Ok(Some(bytes))) if self.parser.push(&bytes) => {}
                // Closed, broken, silent for too long or an oversized message: ask again
                // from the last id.
                _ => {
                    self.response = None;
                    self.parser = Parser::default();
                    self.back_off(None).await;
                }
            }
        }
    }

    async fn connect(&self) -> Result<reqwest::Response, ClientError> {
        let mut request = self
            .client
            .http
            .get(&self.url)
            .header(ACCEPT, "text/event-stream");
        let mut query = self.query.clone();
        match &self.last_id {
            Some(id) => request = request.header("last-event-id", id.as_str()),
            None => {
                if let Some(from) = self.from {
                    query.push(("from", from.to_string()));
                }
            }
        }
        let response = request
            .query(&query)
            .send()
            .await
            .map_err(ClientError::transport)?;
        let status = response.status();
        if status.is_success() {
            let is_sse = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if is_sse {
                return Ok(response);
            }
            return Err(ClientError::unexpected(
                status,
                &without_query(&response),
                b"",
                "not an event stream".into(),
            ));
        }
        let url = without_query(&response);
        let after = retry_after(&response);
        let body = response.bytes().await.map_err(ClientError::transport)?;
        Err(ClientError::from_answer(status, &url, &body).with_retry_after(after))
    }

    /// Waits before the next attempt: what the server asked, else a doubling pause.
    async fn back_off(&mut self, asked: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        let doubling = Duration::from_millis(100)
            .saturating_mul(1 << self.failures.min(6))
            .min(MAX_BACKOFF);
        tokio::time::sleep(asked.unwrap_or(doubling).min(MAX_BACKOFF)).await;
    }
}

/// One SSE message: its `id` and its `data` lines joined (`None` without any).
#[derive(Debug, Default, PartialEq, Eq)]
struct Message {
    id: Option<String>,
    data: Option<String>,
}

/// An incremental parser of `text/event-stream` (the WHATWG rules esk's server needs: `id`,
/// `data` and comment lines, `\n`, `\r\n` or `\r` line ends; `event` is ignored, the type is
/// in the envelope).
#[derive(Debug, Default)]
struct Parser {
    buffer: Vec<u8>,
    /// Where the unparsed bytes of `buffer` start.
    start: usize,
    current: Message,
}

impl Parser {
    /// Adds received bytes; false when a message grows past [`MAX_MESSAGE_BYTES`].
    fn push(&mut self, bytes: &[u8]) -> bool {
        self.buffer.drain(..self.start);
        self.start = 0;
        self.buffer.extend_from_slice(bytes);
        self.buffer.len() <= MAX_MESSAGE_BYTES
    }

    /// The next complete message, if one has arrived.
    fn next_message(&mut self) -> Option<Message> {
        loop {
            let rest = &self.buffer[self.start..];
            let end = rest.iter().position(|b| *b == b'\n' || *b == b'\r')?;
            // A `\r` at the end of what arrived may be the first half of `\r\n`.
            let width = match (rest[end], rest.get(end + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) => return None,
                _ => 1,
            };
            let line = String::from_utf8_lossy(&rest[..end]).into_owned();
            self.start += end + width;
            if line.is_empty() {
                let message = std::mem::take(&mut self.current);
                if message.id.is_some() || message.data.is_some() {
                    return Some(message);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
                "data" => match &mut self.current.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.current.data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(chunks: &[&str]) -> Vec<Message> {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            assert!(parser.push(chunk.as_bytes()));
            while let Some(message) = parser.next_message() {
                out.push(message);
            }
        }
        out
    }

    #[test]
    fn messages_are_parsed_across_chunks_and_line_ends() {
        let got = messages(&[
            "id: 3\n",
            "event: Placed\ndata: {\"a\":\r",
            "\ndata: 1}\r\n\r\n: heartbeat\n\n",
            "id: 9\n\nid: 10\ndata:x\n\n",
        ]);
        assert_eq!(
            got,
            vec![
                Message {
                    id: Some("3".into()),
                    data: Some("{\"a\":\n1}".into())
                },
                Message {
                    id: Some("9".into()),
                    data: None
                },
                Message {
                    id: Some("10".into()),
                    data: Some("x".into())
                },
            ]
        );
    }

    #[test]
    fn comments_alone_are_not_messages() {
        assert!(messages(&[": heartbeat\n\n: closed slow_subscriber: x\n\n"]).is_empty());
    }

    #[test]
    fn filters_become_comma_separated_parameters() {
        let filters = Filters::all().types(["A", "B"]).categories(["Order"]);
        assert_eq!(
            filters.query(),
            vec![("types", "A,B".into()), ("categories", "Order".into())]
        );
        assert!(Filters::all().query().is_empty());
    }
}
