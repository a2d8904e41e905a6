//! The JSON-RPC answers an SSE stream carries, found as its bytes pass, in
//! whatever cuts they come: a legacy HTTP+SSE session's calls are answered on
//! its GET stream, and the proxy forgets each call as its answer goes by
//! (`proxy::splice`), so that a stream that moves errs only the calls still
//! waiting.
//!
//! One pass, constant memory whatever an event's size: the SSE lines as the
//! WHATWG grammar cuts them (`\r\n`, `\n` or `\r`; `data` lines joined with
//! `\n`; an `event` line names the type; a blank line dispatches an event
//! that has data), and in the data the top-level object's keys, the `id`'s
//! text kept as it came (the calls are noted as their requests' JSON text).
//! An answer is what `serde_json` would read as one: an object with a
//! non-null `result` or `error`, no non-null `method`, and no key of the four
//! twice. The scan does not check the rest of the JSON; what is not JSON
//! passes as an answer the client could not read either.

/// Longest `id` kept: the ids noted come from requests the proxy read whole,
/// which are smaller (`proxy::migrate::MAX_BODY`).
pub const MAX_ID: usize = 64 * 1024;
/// Longest object key compared: `result` spelled in `\u` escapes is 36
/// bytes, so a longer key is none of the four.
const MAX_KEY: usize = 64;
/// An event type longer than `message` is not `message`.
const MAX_TYPE: usize = b"message".len();

/// An event's data as `serde_json` reads a JSON-RPC message: `None` when it
/// is no answer (not such an object, a key of the four twice, a request or
/// a notification), else the answer's `id` as its JSON text (`None`: it has
/// none, or `null`). What [`AnswerScan`] finds in one pass; it reads the
/// replay's answers, and it is the model the fuzz target holds the scan to.
pub fn serde_answer_id(data: &str) -> Option<Option<&serde_json::value::RawValue>> {
    #[derive(serde::Deserialize)]
    struct Message<'a> {
        #[serde(borrow, default)]
        id: Option<&'a serde_json::value::RawValue>,
        #[serde(default)]
        method: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        result: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
    }
    let m: Message<'_> = serde_json::from_str(data).ok()?;
    if m.method.is_some() || (m.result.is_none() && m.error.is_none()) {
        return None;
    }
    Some(m.id)
}

/// Finds the answers in an SSE stream's bytes, chunk by chunk.
#[derive(Debug, Default)]
pub struct AnswerScan {
    line: Line,
    /// The last byte was a `\r`: a `\n` right after it ends nothing.
    cr: bool,
    /// The current line's field name, while it is read (its first bytes).
    name: [u8; 5],
    name_len: usize,
    /// The event has a `data` line.
    has_data: bool,
    /// The event's type (its first bytes; `type_len` counts them all).
    kind: [u8; MAX_TYPE],
    type_len: usize,
    json: Json,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Reading the field name (a line's first bytes).
    #[default]
    Name,
    /// Past the field's `:`; `first` until the value's first byte (one
    /// space there is not part of it).
    Value { field: Field, first: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Other,
}

impl AnswerScan {
    /// Scans `bytes`; `dispatched` gets each event that ends in them (one
    /// with data), with its answer's `id` (JSON text) when it is a
    /// `message` event carrying a JSON-RPC answer.
    pub fn feed(&mut self, mut bytes: &[u8], mut dispatched: impl FnMut(Option<&[u8]>)) {
        while !bytes.is_empty() {
            if std::mem::take(&mut self.cr) && bytes[0] == b'\n' {
                bytes = &bytes[1..];
                continue;
            }
            match memchr::memchr2(b'\n', b'\r', bytes) {
                Some(at) => {
                    self.part(&bytes[..at]);
                    self.cr = bytes[at] == b'\r';
                    self.line_end(&mut dispatched);
                    bytes = &bytes[at + 1..];
                }
                None => {
                    self.part(bytes);
                    return;
                }
            }
        }
    }

    /// Bytes of the current line, no line end among them.
    fn part(&mut self, mut p: &[u8]) {
        if self.line == Line::Name {
            let Some(colon) = memchr::memchr(b':', p) else {
                self.push_name(p);
                return;
            };
            self.push_name(&p[..colon]);
            p = &p[colon + 1..];
            let field = self.field();
            self.begin(field);
            self.line = Line::Value { field, first: true };
        }
        let Line::Value { field, first } = &mut self.line else {
            return;
        };
        if p.is_empty() {
            return;
        }
        if std::mem::take(first) && p[0] == b' ' {
            p = &p[1..];
        }
        match field {
            Field::Data => self.json.feed(p),
            Field::Event => {
                let room = MAX_TYPE.saturating_sub(self.type_len).min(p.len());
                let at = self.type_len.min(MAX_TYPE);
                self.kind[at..at + room].copy_from_slice(&p[..room]);
                self.type_len += p.len();
            }
            Field::Other => {}
        }
    }

    fn push_name(&mut self, p: &[u8]) {
        let room = self.name.len().saturating_sub(self.name_len).min(p.len());
        let at = self.name_len.min(self.name.len());
        self.name[at..at + room].copy_from_slice(&p[..room]);
        self.name_len += p.len();
    }

    fn field(&self) -> Field {
        match self.name.get(..self.name_len) {
            Some(b"data") => Field::Data,
            Some(b"event") => Field::Event,
            _ => Field::Other,
        }
    }

    /// A field's line begins (its value follows, perhaps empty).
    fn begin(&mut self, field: Field) {
        match field {
            Field::Data => {
                if self.has_data {
                    self.json.feed(b"\n");
                }
                self.has_data = true;
            }
            Field::Event => self.type_len = 0,
            Field::Other => {}
        }
    }

    fn line_end(&mut self, dispatched: &mut impl FnMut(Option<&[u8]>)) {
        if self.line == Line::Name {
            if self.name_len == 0 {
                self.dispatch(dispatched);
            } else {
                // A field name alone: the field with an empty value.
                let field = self.field();
                self.begin(field);
            }
        }
        self.line = Line::Name;
        self.name_len = 0;
    }

    fn dispatch(&mut self, dispatched: &mut impl FnMut(Option<&[u8]>)) {
        if std::mem::take(&mut self.has_data) {
            let message =
                self.type_len == 0 || (self.type_len == MAX_TYPE && self.kind == *b"message");
            dispatched(self.json.answer().filter(|_| message));
        }
        self.json.reset();
        self.type_len = 0;
    }
}

/// The top-level object of an event's data, as its bytes pass.
#[derive(Debug)]
struct Json {
    at: At,
    /// Nesting inside a top-level value (an object or array).
    depth: u32,
    /// The key being read (its first bytes; `key_len` counts them all).
    key: [u8; MAX_KEY],
    key_len: usize,
    /// The key whose value is being read, if one of the four.
    value_of: Option<Key>,
    /// Which of the four keys came, and which with a value other than `null`.
    seen: u8,
    set: u8,
    /// The `id`'s JSON text; `id_over` when it passed [`MAX_ID`].
    id: Vec<u8>,
    id_over: bool,
    /// The data is not an object, or its keys repeat: no answer.
    broken: bool,
}

impl Default for Json {
    fn default() -> Self {
        Json {
            at: At::Start,
            depth: 0,
            key: [0; MAX_KEY],
            key_len: 0,
            value_of: None,
            seen: 0,
            set: 0,
            id: Vec::new(),
            id_over: false,
            broken: false,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the top-level `{`.
    #[default]
    Start,
    /// After `{` (`first`) or `,`: a key is next (or `}` after `{`).
    Key {
        first: bool,
    },
    KeyText {
        escaped: bool,
    },
    Colon,
    Value,
    /// Inside a string value; `depth` says at which level.
    Text {
        escaped: bool,
    },
    /// A number or a literal at the top level.
    Scalar,
    /// Inside an object or array value, outside its strings.
    Nested,
    /// After a top-level value: `,` or `}`.
    After,
    /// After the top-level `}`: only whitespace may follow.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Id = 1,
    Method = 2,
    Result = 4,
    Error = 8,
}

fn space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Json {
    fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() && !self.broken {
            let b = bytes[i];
            match self.at {
                At::Text { escaped } => {
                    // To the next quote or backslash in one step.
                    if escaped {
                        self.at = At::Text { escaped: false };
                        self.keep(&bytes[i..=i]);
                        i += 1;
                        continue;
                    }
                    let rest = &bytes[i..];
                    let Some(at) = memchr::memchr2(b'"', b'\\', rest) else {
                        self.keep(rest);
                        return;
                    };
                    self.keep(&rest[..=at]);
                    i += at + 1;
                    if rest[at] == b'\\' {
                        self.at = At::Text { escaped: true };
                    } else if self.depth == 0 {
                        self.value_end();
                    } else {
                        self.at = At::Nested;
                    }
                    continue;
                }
                At::Start if !space(b) => {
                    if b == b'{' {
                        self.at = At::Key { first: true };
                    } else {
                        self.broken = true;
                    }
                }
                At::Key { first } if !space(b) => match b {
                    b'"' => {
                        self.key_len = 0;
                        self.at = At::KeyText { escaped: false };
                    }
                    b'}' if first => self.at = At::Done,
                    _ => self.broken = true,
                },
                At::KeyText { escaped } => {
                    if !escaped && b == b'"' {
                        self.key_end();
                        self.at = At::Colon;
                    } else {
                        self.at = At::KeyText {
                            escaped: !escaped && b == b'\\',
                        };
                        if self.key_len < MAX_KEY {
                            self.key[self.key_len] = b;
                        }
                        self.key_len += 1;
                    }
                }
                At::Colon if !space(b) => {
                    if b == b':' {
                        self.at = At::Value;
                    } else {
                        self.broken = true;
                    }
                }
                At::Value if !space(b) => {
                    if let Some(k) = self.value_of {
                        if b != b'n' {
                            self.set |= k as u8;
                        }
                    }
                    self.keep(&bytes[i..=i]);
                    self.at = match b {
                        b'"' => At::Text { escaped: false },
                        b'{' | b'[' => {
                            self.depth = 1;
                            At::Nested
                        }
                        _ => At::Scalar,
                    };
                }
                At::Scalar => {
                    if space(b) || b == b',' || b == b'}' {
                        self.value_end();
                        continue; // the delimiter is the next state's
                    }
                    self.keep(&bytes[i..=i]);
                }
                At::Nested => {
                    // To the next quote or bracket in one step.
                    let rest = &bytes[i..];
                    let stop = rest
                        .iter()
                        .position(|&c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']'));
                    let Some(at) = stop else {
                        self.keep(rest);
                        return;
                    };
                    self.keep(&rest[..=at]);
                    i += at + 1;
                    match rest[at] {
                        b'"' => self.at = At::Text { escaped: false },
                        b'{' | b'[' => self.depth += 1,
                        _ => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                self.value_end();
                            }
                        }
                    }
                    continue;
                }
                At::After if !space(b) => match b {
                    b',' => self.at = At::Key { first: false },
                    b'}' => self.at = At::Done,
                    _ => self.broken = true,
                },
                At::Done if !space(b) => self.broken = true,
                _ => {} // whitespace between tokens
            }
            i += 1;
        }
    }

    /// For the next event: as new, the id's buffer kept unless it grew.
    fn reset(&mut self) {
        let mut id = std::mem::take(&mut self.id);
        id.clear();
        if id.capacity() > 256 {
            id = Vec::new();
        }
        *self = Json {
            id,
            ..Json::default()
        };
    }

    /// Bytes of the value being read: kept when it is the `id`'s.
    fn keep(&mut self, bytes: &[u8]) {
        if self.value_of == Some(Key::Id) && !self.id_over {
            if self.id.len() + bytes.len() > MAX_ID {
                self.id_over = true;
                self.id = Vec::new();
            } else {
                self.id.extend_from_slice(bytes);
            }
        }
    }

    fn key_end(&mut self) {
        let raw = &self.key[..self.key_len.min(MAX_KEY)];
        let key = if self.key_len > MAX_KEY {
            None
        } else if memchr::memchr(b'\\', raw).is_some() {
            // Escapes: read as JSON reads them (`"\u0069d"` is `id`).
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            serde_json::from_slice::<String>(&quoted)
                .ok()
                .and_then(|k| key_of(k.as_bytes()))
        } else {
            key_of(raw)
        };
        if let Some(k) = key {
            if self.seen & k as u8 != 0 {
                self.broken = true; // as a JSON-RPC reader refuses it
            }
            self.seen |= k as u8;
        }
        self.value_of = key;
    }

    fn value_end(&mut self) {
        self.value_of = None;
        self.at = At::After;
    }

    /// The answer's id, if the data was one (and its id not `null`).
    fn answer(&self) -> Option<&[u8]> {
        let set = |k: Key| self.set & k as u8 != 0;
        if self.broken
            || self.at != At::Done
            || set(Key::Method)
            || !(set(Key::Result) || set(Key::Error))
            || !set(Key::Id)
            || self.id_over
        {
            return None;
        }
        Some(&self.id)
    }
}

fn key_of(k: &[u8]) -> Option<Key> {
    Some(match k {
        b"id" => Key::Id,
        b"method" => Key::Method,
        b"result" => Key::Result,
        b"error" => Key::Error,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids `stream` dispatches, fed in chunks of `cut` bytes.
    fn scan(stream: &[u8], cut: usize) -> Vec<Option<String>> {
        let mut s = AnswerScan::default();
        let mut out = Vec::new();
        for part in stream.chunks(cut) {
            s.feed(part, |id| {
                out.push(id.map(|i| String::from_utf8_lossy(i).into_owned()))
            });
        }
        out
    }

    fn every_cut(stream: &[u8]) -> Vec<Option<String>> {
        let whole = scan(stream, stream.len().max(1));
        for cut in 1..stream.len() {
            assert_eq!(scan(stream, cut), whole, "cut every {cut} bytes");
        }
        whole
    }

    #[test]
    fn answers_are_found_in_any_cut_and_only_answers() {
        let stream = concat!(
            "event: endpoint\ndata: /messages?sessionId=a\n\n",
            ": a comment\n",
            "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"id\":9}}\r\n\r\n",
            // An id after the result (the TypeScript SDK's order), nested ids ignored.
            "data: {\"jsonrpc\":\"2.0\",\"result\":{\"id\":7,\"content\":[{\"text\":\"}\\\"{\"}]},\"id\":1}\n\n",
            // Split over data lines, CR line ends, a string id with an escape.
            "data: {\"jsonrpc\":\"2.0\",\r",
            "data:  \"id\" : \"a\\\"b\" ,\"error\":{\"code\":1}}\r\r",
            // A request from the server is no answer; nor is a null result.
            "data: {\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"sampling/createMessage\",\"result\":{}}\n\n",
            "data: {\"id\":4,\"result\":null}\n\n",
            // Another event type; a key twice; not an object; trailing junk.
            "event: other\ndata: {\"id\":5,\"result\":{}}\n\n",
            "data: {\"id\":5,\"result\":{},\"id\":6}\n\n",
            "data: [{\"id\":5,\"result\":{}}]\n\n",
            "data: {\"id\":5,\"result\":{}} x\n\n",
            // An escaped key is the key; a null id is none; an object id is its text.
            "data: {\"\\u0069d\":[1, {\"a\":\"]\"}],\"result\":0}\n\n",
            "data: {\"id\":null,\"result\":{}}\n\n",
            "data: {\"result\":{},\"id\":-1.5e3}\n\n",
            // An event with no data dispatches nothing; an unended one neither.
            "event: message\n\n",
            "data: {\"id\":8,\"result\":{}}\n",
        );
        let want: Vec<Option<String>> = [
            None,
            None,
            Some("1"),
            Some("\"a\\\"b\""),
            None,
            None,
            None,
            None,
            None,
            None,
            Some("[1, {\"a\":\"]\"}]"),
            None,
            Some("-1.5e3"),
        ]
        .iter()
        .map(|s| s.map(str::to_owned))
        .collect();
        assert_eq!(every_cut(stream.as_bytes()), want);
    }

    #[test]
    fn an_answer_of_any_size_is_found_and_an_oversize_id_is_not_kept() {
        let text = "x".repeat(1 << 20);
        let big = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{text}\"}}]}},\"id\":42}}\n\n"
        );
        for cut in [1 << 10, 16 << 10, 1 << 20] {
            assert_eq!(scan(big.as_bytes(), cut), vec![Some("42".to_owned())]);
        }
        let long_id = format!(
            "data: {{\"id\":\"{}\",\"result\":{{}}}}\n\n",
            "i".repeat(MAX_ID)
        );
        assert_eq!(scan(long_id.as_bytes(), 4096), vec![None]);
        // The scan keeps no more than the id while it passes.
        let mut s = AnswerScan::default();
        s.feed(&big.as_bytes()[..big.len() - 10], |_| {});
        assert!(s.json.id.capacity() < 64, "{}", s.json.id.capacity());
    }
}
