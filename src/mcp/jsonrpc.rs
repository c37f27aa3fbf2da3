//! JSON-RPC 2.0 envelopes, parsed just enough to route (sandbox-notes.md §4.3, recommendation 9):
//! `params`, `result` and `error` stay [`RawValue`]s and are never re-serialised, so methods and
//! fields the broker does not know pass through unchanged.
//!
//! [`RawMessage`] mirrors the wire; [`Message`] is the validated form (STYLE.md habit 3).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Our own JSON-RPC error codes stay in `-32000…-32019` (checklist item 118: 2026-07-28
/// reserves `-32020…-32099`).
pub mod codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Generic "bad request" without a more specific code (the TS SDK's choice, item 118).
    pub const BAD_REQUEST: i64 = -32000;
    /// The request did not complete in time (item 143).
    pub const REQUEST_TIMEOUT: i64 = -32001;
    /// The MCP server child died or could not be started (item 142).
    pub const CHILD_UNAVAILABLE: i64 = -32002;
    /// A configured limit was reached.
    pub const LIMIT_REACHED: i64 = -32003;
    /// The client cancelled the request (the response is only for clients that wait anyway).
    pub const CANCELLED: i64 = -32004;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("not valid JSON")]
    NotJson,
    #[error("not a JSON-RPC 2.0 message")]
    NotJsonRpc,
    #[error("request id must be a string or an integer")]
    InvalidId,
    #[error("a message has either a method or a result/error")]
    Ambiguous,
}

/// The wire form: every field optional, bodies raw.
#[derive(Debug, Deserialize)]
pub struct RawMessage<'a> {
    #[serde(borrow)]
    pub jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present_raw")]
    pub id: Option<&'a RawValue>,
    pub method: Option<String>,
    #[serde(borrow)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow)]
    pub error: Option<&'a RawValue>,
}

impl<'a> RawMessage<'a> {
    /// Parses (and so validates) a whole message without copying any of it.
    pub fn parse(text: &'a str) -> Result<Self, EnvelopeError> {
        serde_json::from_str(text).map_err(|_| EnvelopeError::NotJson)
    }
}

/// A response as the peer wrote it, borrowed from its line: what the bridge needs to forward
/// it with only its id replaced ([`ResponseRef::with_id`]), without copying its result.
/// No `Debug`: it would print the whole line, a tool's answer included.
#[derive(Clone, Copy)]
pub struct ResponseRef<'a> {
    line: &'a str,
    id: &'a RawValue,
    pub is_error: bool,
}

impl<'a> ResponseRef<'a> {
    /// `raw` (parsed from `line`) as a response, if it is a valid one: the same rules as
    /// [`Message`]'s (`jsonrpc: "2.0"`, a string or integer id, exactly one of result and
    /// error, no method).
    pub fn of(line: &'a str, raw: &RawMessage<'a>) -> Option<Self> {
        if raw.jsonrpc.map(RawValue::get) != Some("\"2.0\"") || raw.method.is_some() {
            return None;
        }
        let is_error = match (raw.result, raw.error) {
            (Some(_), None) => false,
            (None, Some(_)) => true,
            _ => return None,
        };
        let id = raw.id.filter(|id| valid_id(id))?;
        Some(Self { line, id, is_error })
    }

    /// The whole line.
    pub fn line(&self) -> &'a str {
        self.line
    }

    /// The id, if it is an integer (the broker's ids towards the child are).
    pub fn id_i64(&self) -> Option<i64> {
        serde_json::from_str(self.id.get()).ok()
    }

    /// The line with its id replaced by `new_id` and everything else as the peer wrote it;
    /// `None` if the id is not where the parser saw it (then re-serialise instead).
    pub fn with_id(&self, new_id: &Id) -> Option<String> {
        let id = self.id.get();
        // The parser borrows the id from the line: its place in the line is its address's
        // distance from the line's start, checked below against the bytes themselves.
        let start = id.as_ptr().addr().checked_sub(self.line.as_ptr().addr())?;
        let end = start.checked_add(id.len())?;
        if self.line.get(start..end)? != id {
            return None;
        }
        let (head, tail) = (self.line.get(..start)?, self.line.get(end..)?);
        let mut out = String::with_capacity(head.len() + new_id.key().len() + tail.len());
        out.push_str(head);
        out.push_str(new_id.key());
        out.push_str(tail);
        Some(out)
    }
}

/// Keeps an explicit `"id": null` distinguishable from an absent id.
fn present_raw<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// A request id as the peer wrote it (string or integer), kept verbatim so the answer carries
/// exactly the id the peer chose (B2511 §Requests).
#[derive(Debug, Clone)]
pub struct Id(Box<RawValue>);

impl PartialEq for Id {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Id {}

/// Whether a raw id is one JSON-RPC allows here: a string or an integer. A raw value is valid
/// JSON, so one that starts with a quote is a string.
fn valid_id(raw: &RawValue) -> bool {
    let text = raw.get();
    text.starts_with('"') || serde_json::from_str::<i64>(text).is_ok()
}

impl Id {
    fn parse(raw: &RawValue) -> Result<Self, EnvelopeError> {
        if !valid_id(raw) {
            return Err(EnvelopeError::InvalidId);
        }
        RawValue::from_string(raw.get().to_owned())
            .map(Self)
            .map_err(|_| EnvelopeError::InvalidId)
    }

    pub fn number(value: i64) -> Self {
        // A formatted integer is always valid JSON.
        Self(RawValue::from_string(value.to_string()).unwrap_or_else(|_| null_raw()))
    }

    pub fn string(value: &str) -> Self {
        let text = serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned());
        Self(RawValue::from_string(text).unwrap_or_else(|_| null_raw()))
    }

    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// The id as an integer, if it is one (the broker's ids towards the child are).
    pub fn as_i64(&self) -> Option<i64> {
        serde_json::from_str(self.0.get()).ok()
    }

    /// The id as a string, if it is one (the broker's ids towards the client are).
    pub fn as_str(&self) -> Option<String> {
        serde_json::from_str(self.0.get()).ok()
    }

    /// A canonical key: `1` and `1.0` never occur (integers only), strings keep their quotes,
    /// so `1` and `"1"` stay distinct.
    pub fn key(&self) -> &str {
        self.0.get()
    }
}

fn null_raw() -> Box<RawValue> {
    // `null` is valid JSON; the fallback of the fallback is unreachable in practice.
    RawValue::from_string("null".to_owned()).unwrap_or_default()
}

/// A validated message.
#[derive(Debug)]
pub enum Message {
    Request {
        id: Id,
        method: String,
        params: Option<Box<RawValue>>,
    },
    Notification {
        method: String,
        params: Option<Box<RawValue>>,
    },
    Response {
        id: Id,
        /// `{"result": …}` or `{"error": …}`; exactly one.
        outcome: Outcome,
    },
}

#[derive(Debug)]
pub enum Outcome {
    Result(Box<RawValue>),
    Error(Box<RawValue>),
}

impl Message {
    pub fn parse(text: &str) -> Result<Self, EnvelopeError> {
        Self::try_from(RawMessage::parse(text)?)
    }

    pub fn method(&self) -> Option<&str> {
        match self {
            Self::Request { method, .. } | Self::Notification { method, .. } => Some(method),
            Self::Response { .. } => None,
        }
    }

    pub fn params(&self) -> Option<&RawValue> {
        match self {
            Self::Request { params, .. } | Self::Notification { params, .. } => params.as_deref(),
            Self::Response { .. } => None,
        }
    }

    /// Serialises with `id` replaced (requests and responses) — the only rewrite the bridge does.
    pub fn to_line_with_id(&self, new_id: Option<&Id>) -> String {
        let wire = match self {
            Self::Request { id, method, params } => WireOut {
                jsonrpc: "2.0",
                id: Some(new_id.unwrap_or(id).as_raw()),
                method: Some(method),
                params: params.as_deref(),
                result: None,
                error: None,
            },
            Self::Notification { method, params } => WireOut {
                jsonrpc: "2.0",
                id: None,
                method: Some(method),
                params: params.as_deref(),
                result: None,
                error: None,
            },
            Self::Response { id, outcome } => {
                let (result, error) = match outcome {
                    Outcome::Result(raw) => (Some(raw.as_ref()), None),
                    Outcome::Error(raw) => (None, Some(raw.as_ref())),
                };
                WireOut {
                    jsonrpc: "2.0",
                    id: Some(new_id.unwrap_or(id).as_raw()),
                    method: None,
                    params: None,
                    result,
                    error,
                }
            }
        };
        // Sized up front (with room for the newline the bridge appends): no regrowth while
        // writing. Serialising borrowed raw values and strings cannot fail, and serde_json
        // writes UTF-8.
        let raw_len = |raw: Option<&RawValue>| raw.map_or(0, |raw| raw.get().len());
        let capacity = 64
            + wire.id.map_or(0, |id| id.get().len())
            + wire.method.map_or(0, str::len)
            + raw_len(wire.params)
            + raw_len(wire.result)
            + raw_len(wire.error);
        let mut out = Vec::with_capacity(capacity);
        match serde_json::to_writer(&mut out, &wire) {
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub fn to_line(&self) -> String {
        self.to_line_with_id(None)
    }
}

impl<'a> TryFrom<RawMessage<'a>> for Message {
    type Error = EnvelopeError;

    fn try_from(raw: RawMessage<'a>) -> Result<Self, Self::Error> {
        if raw.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
            return Err(EnvelopeError::NotJsonRpc);
        }
        let params = raw.params.map(ToOwned::to_owned);
        match (raw.method, raw.id, raw.result, raw.error) {
            (Some(method), Some(id), None, None) => Ok(Self::Request {
                id: Id::parse(id)?,
                method,
                params,
            }),
            (Some(method), None, None, None) => Ok(Self::Notification { method, params }),
            (None, Some(id), Some(result), None) => Ok(Self::Response {
                id: Id::parse(id)?,
                outcome: Outcome::Result(result.to_owned()),
            }),
            (None, Some(id), None, Some(error)) => {
                // An error response may carry `id: null` when the id was unreadable; such a
                // response cannot be routed, so it is rejected like any invalid id.
                Ok(Self::Response {
                    id: Id::parse(id)?,
                    outcome: Outcome::Error(error.to_owned()),
                })
            }
            _ => Err(EnvelopeError::Ambiguous),
        }
    }
}

#[derive(Serialize)]
struct WireOut<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RawValue>,
}

/// A JSON-RPC error response, as a line. `id: None` writes `"id": null` (a transport-level
/// error that answers no particular request, item 96/100).
pub fn error_line(id: Option<&Id>, code: i64, message: &str) -> String {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        code: i64,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct ErrorOut<'a> {
        jsonrpc: &'static str,
        id: Option<&'a RawValue>,
        error: ErrorBody<'a>,
    }
    serde_json::to_string(&ErrorOut {
        jsonrpc: "2.0",
        id: id.map(Id::as_raw),
        error: ErrorBody { code, message },
    })
    .unwrap_or_default()
}

/// A notification line built by the broker (`notifications/initialized`, `notifications/cancelled`).
pub fn notification_line(method: &str, params: Option<&serde_json::Value>) -> String {
    let mut value = serde_json::json!({"jsonrpc": "2.0", "method": method});
    if let (Some(params), Some(object)) = (params, value.as_object_mut()) {
        object.insert("params".to_owned(), params.clone());
    }
    value.to_string()
}

/// A request line built by the broker (replays after a respawn, item 141).
pub fn request_line(id: i64, method: &str, params: Option<&RawValue>) -> String {
    serde_json::to_string(&WireOut {
        jsonrpc: "2.0",
        id: Some(Id::number(id).as_raw()),
        method: Some(method),
        params,
        result: None,
        error: None,
    })
    .unwrap_or_default()
}

/// `json` (one valid JSON text) made safe to frame as one line for a stdio child.
///
/// Raw values are kept as the client wrote them, whitespace included, and a pretty-printed
/// request has line breaks in it: written as they are, the child would read the message as
/// several lines, and whatever the client put on a line of its own (a whole JSON-RPC message,
/// with an id the broker never mapped) as a message of its own. In valid JSON a raw CR or LF can
/// only be whitespace between tokens, so each becomes a space. NEL, LINE SEPARATOR and
/// PARAGRAPH SEPARATOR can only be inside strings, where some line readers (Python's
/// `splitlines`, JavaScript before ES2019) also break lines, so each becomes its `\u` escape.
/// Neither change alters what the JSON means.
pub fn single_line(json: String) -> String {
    const BREAKS: [char; 5] = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];
    // A vectorised byte scan first: `\n`, `\r`, and the lead bytes of U+0085 (C2 85) and
    // U+2028/U+2029 (E2 80 A8/A9). Only a line holding one of those is looked at char by char.
    let bytes = json.as_bytes();
    let candidate = memchr::memchr3(b'\n', b'\r', 0xC2, bytes).is_some()
        || memchr::memchr(0xE2, bytes).is_some();
    if !candidate || !json.contains(BREAKS) {
        return json;
    }
    let mut line = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '\n' | '\r' => line.push(' '),
            '\u{85}' | '\u{2028}' | '\u{2029}' => {
                line.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => line.push(c),
        }
    }
    line
}

/// The parts of `params` the bridge looks at; everything else is ignored (and kept raw).
#[derive(Debug, Default, Deserialize)]
pub struct PeekParams {
    #[serde(rename = "_meta")]
    pub meta: Option<PeekMeta>,
    #[serde(rename = "progressToken")]
    pub progress_token: Option<Box<RawValue>>,
    #[serde(rename = "requestId")]
    pub request_id: Option<Box<RawValue>>,
    pub name: Option<String>,
    pub uri: Option<String>,
    pub level: Option<String>,
    #[serde(rename = "protocolVersion")]
    pub protocol_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PeekMeta {
    #[serde(rename = "progressToken")]
    pub progress_token: Option<Box<RawValue>>,
}

pub fn peek(params: Option<&RawValue>) -> PeekParams {
    params
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn numeric_ids_are_written_exactly_at_every_width() {
        for value in [0, 7, -1, 1_000_000, i64::MAX, i64::MIN] {
            let id = Id::number(value);
            assert_eq!(id.key(), value.to_string());
            assert_eq!(id.as_i64(), Some(value));
        }
    }

    #[test]
    fn a_pretty_printed_message_becomes_one_line_that_means_the_same() {
        let smuggled = "{\r\n  \"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"tools/call\",\n  \"params\":\n{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"x\",\"s\":\"a\u{2028}b\u{85}c\u{2029}\"}\r}";
        let parsed: serde_json::Value = serde_json::from_str(smuggled).unwrap();
        let message = Message::parse(smuggled).unwrap();
        for line in [
            single_line(smuggled.to_owned()),
            single_line(message.to_line()),
        ] {
            assert!(
                !line.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']),
                "{line:?}"
            );
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&line).unwrap(),
                parsed
            );
        }
        let plain = r#"{"jsonrpc":"2.0","method":"m"}"#.to_owned();
        assert_eq!(single_line(plain.clone()), plain);
    }

    use super::*;

    #[test]
    fn classifies_the_four_shapes() {
        let request = Message::parse(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#).unwrap();
        assert!(matches!(request, Message::Request { .. }));
        let notification =
            Message::parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(matches!(notification, Message::Notification { .. }));
        let ok = Message::parse(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
        assert!(matches!(
            ok,
            Message::Response {
                outcome: Outcome::Result(_),
                ..
            }
        ));
        let err =
            Message::parse(r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#).unwrap();
        assert!(matches!(
            err,
            Message::Response {
                outcome: Outcome::Error(_),
                ..
            }
        ));
    }

    #[test]
    fn rejects_bad_envelopes() {
        assert_eq!(Message::parse("nope").unwrap_err(), EnvelopeError::NotJson);
        assert_eq!(
            Message::parse(r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#).unwrap_err(),
            EnvelopeError::NotJsonRpc
        );
        for id in ["null", "1.5", "{}", "[]", "true"] {
            let text = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"x"}}"#);
            assert_eq!(
                Message::parse(&text).unwrap_err(),
                EnvelopeError::InvalidId,
                "{id}"
            );
        }
        assert_eq!(
            Message::parse(r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#).unwrap_err(),
            EnvelopeError::Ambiguous
        );
    }

    #[test]
    fn id_rewrite_keeps_params_byte_for_byte() {
        let text = r#"{"jsonrpc":"2.0","id":"client-1","method":"tools/call","params":{"name":"x","arguments":{"a":[1, 2,3],"z":"\u00e9"}}}"#;
        let message = Message::parse(text).unwrap();
        let line = message.to_line_with_id(Some(&Id::number(42)));
        assert_eq!(
            line,
            r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"x","arguments":{"a":[1, 2,3],"z":"\u00e9"}}}"#
        );
        let back = Message::parse(&line).unwrap();
        let Message::Request { id, .. } = back else {
            panic!()
        };
        assert_eq!(id.as_i64(), Some(42));
    }

    #[test]
    fn a_borrowed_response_gets_its_id_replaced_and_nothing_else() {
        let text = r#"{ "result" : {"content":[{"type":"text","text":"id: 7"}]}, "jsonrpc":"2.0","id" : 7 ,"extra":1}"#;
        let raw = RawMessage::parse(text).unwrap();
        let response = ResponseRef::of(text, &raw).unwrap();
        assert_eq!(response.id_i64(), Some(7));
        assert!(!response.is_error);
        assert_eq!(
            response.with_id(&Id::string("client-7")).unwrap(),
            r#"{ "result" : {"content":[{"type":"text","text":"id: 7"}]}, "jsonrpc":"2.0","id" : "client-7" ,"extra":1}"#
        );
        let error = r#"{"jsonrpc":"2.0","id":"s-1","error":{"code":-1,"message":"x"}}"#;
        let raw = RawMessage::parse(error).unwrap();
        let response = ResponseRef::of(error, &raw).unwrap();
        assert!(response.is_error);
        assert_eq!(response.id_i64(), None);
        assert_eq!(
            response.with_id(&Id::number(3)).unwrap(),
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"x"}}"#
        );
    }

    #[test]
    fn only_valid_responses_are_borrowed() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","method":"x"}"#,
            r#"{"jsonrpc":"1.0","id":1,"result":{}}"#,
            r#"{"id":1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{}}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":[1],"result":{}}"#,
        ] {
            let raw = RawMessage::parse(text).unwrap();
            assert!(ResponseRef::of(text, &raw).is_none(), "{text}");
        }
    }

    #[test]
    fn a_response_not_borrowed_from_its_line_is_not_spliced() {
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        let raw = RawMessage::parse(text).unwrap();
        let response = ResponseRef::of(text, &raw).unwrap();
        let copy = text.to_owned();
        let elsewhere = ResponseRef {
            line: &copy,
            ..response
        };
        // Same bytes, another string: the id's address is not inside it.
        assert_eq!(elsewhere.with_id(&Id::number(2)), None);
        assert!(response.with_id(&Id::number(2)).is_some());
    }

    #[test]
    fn string_and_number_ids_stay_distinct() {
        assert_ne!(Id::number(1).key(), Id::string("1").key());
    }

    #[test]
    fn peeks_progress_tokens_and_names() {
        let raw = RawValue::from_string(
            r#"{"name":"echo","_meta":{"progressToken":"p1"},"arguments":{}}"#.to_owned(),
        )
        .unwrap();
        let peek = peek(Some(&raw));
        assert_eq!(peek.name.as_deref(), Some("echo"));
        assert_eq!(peek.meta.unwrap().progress_token.unwrap().get(), "\"p1\"");
    }

    #[test]
    fn error_lines_are_valid_json_rpc() {
        let line = error_line(None, codes::BAD_REQUEST, "Bad Request: no session");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["id"], serde_json::Value::Null);
        assert_eq!(value["error"]["code"], -32000);
    }
}
