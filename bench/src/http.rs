//! The load generator's HTTP/1.1 client, on raw tokio sockets: one request in
//! flight per connection (no pipelining), responses framed by `Content-Length`
//! or chunked encoding, SSE bodies read incrementally.
//!
//! Cheap on purpose: on a small machine the load generator shares its cores
//! with the upstreams, so every cycle it spends is a cycle the upstream does
//! not get. It must never be slower for one proxy than for another: the same
//! code path serves every target.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::model::Slot;

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The connection ended before any byte of the response: a keep-alive
    /// connection the server closed while the request was on its way.
    #[error("connection closed before the response")]
    ClosedBeforeResponse,
    /// The connection ended or failed inside the response.
    #[error("connection broke inside the response: {0}")]
    Broken(String),
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// Opens a TCP connection to `addr`, from `src` when given (a 127.0.0.x
/// address, so that many connections do not exhaust one address's ports).
pub async fn connect(addr: SocketAddr, src: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        // Let connect() pick the port for the full 4-tuple, not bind().
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(SocketAddr::from((ip, 0)))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The head of a response.
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub status: u16,
    /// `Mcp-Session-Id`, when asked for.
    pub session: Option<String>,
    /// The server will close the connection after this response.
    pub close: bool,
    pub event_stream: bool,
    /// The slot `mcpflip upstream` names in `X-Served-By` (parsed without
    /// allocating: every response carries it).
    pub served_by: Option<Slot>,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked(Chunk),
    UntilEof,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(usize),
    DataEnd,
    Trailers,
}

/// Incremental body decoder: feeds raw bytes, emits body bytes.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    framing: Framing,
    done: bool,
}

impl Decoder {
    /// Consumes what it can of `input`, appending body bytes to `out`.
    /// Returns how many bytes of `input` were used.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, HttpError> {
        let mut used = 0;
        while !self.done && used < input.len() {
            let rest = &input[used..];
            match &mut self.framing {
                Framing::Length(left) => {
                    let n = (*left).min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    *left -= n;
                    used += n;
                    self.done = *left == 0;
                }
                Framing::UntilEof => {
                    out.extend_from_slice(rest);
                    used += rest.len();
                }
                Framing::Chunked(state) => match *state {
                    Chunk::Size => {
                        let Some(eol) = memchr::memmem::find(rest, b"\r\n") else {
                            return Ok(used);
                        };
                        let line = &rest[..eol];
                        let hex = line.split(|&b| b == b';').next().unwrap_or(line);
                        let hex = std::str::from_utf8(hex)
                            .map_err(|_| HttpError::Malformed("chunk size".into()))?;
                        let size = usize::from_str_radix(hex.trim(), 16)
                            .map_err(|_| HttpError::Malformed(format!("chunk size {hex:?}")))?;
                        used += eol + 2;
                        *state = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Chunk::Data(left) => {
                        let n = left.min(rest.len());
                        out.extend_from_slice(&rest[..n]);
                        used += n;
                        *state = if n == left {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - n)
                        };
                    }
                    Chunk::DataEnd => {
                        if rest.len() < 2 {
                            return Ok(used);
                        }
                        if &rest[..2] != b"\r\n" {
                            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
                        }
                        used += 2;
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let Some(eol) = memchr::memmem::find(rest, b"\r\n") else {
                            return Ok(used);
                        };
                        used += eol + 2;
                        if eol == 0 {
                            self.done = true;
                        }
                    }
                },
            }
        }
        Ok(used)
    }
}

/// One client connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The body of the last response (or the last chunk of a stream).
    pub body: Vec<u8>,
    decoder: Option<Decoder>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            body: Vec::with_capacity(1024),
            decoder: None,
        }
    }

    /// A small connection for long-lived streams (many thousands held at once).
    pub fn new_small(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: vec![0; 4 * 1024],
            start: 0,
            end: 0,
            body: Vec::with_capacity(512),
            decoder: None,
        }
    }

    pub async fn open(addr: SocketAddr, src: Option<Ipv4Addr>) -> Result<Conn, HttpError> {
        connect(addr, src)
            .await
            .map(Conn::new)
            .map_err(HttpError::Connect)
    }

    /// Drops the connection with a TCP reset (`SO_LINGER` 0), as a client
    /// that crashes or loses its network does, instead of a clean FIN.
    pub fn reset(self) {
        // Linger on with a zero timeout: close() sends RST at once and never
        // blocks (tokio's set_linger is deprecated for the blocking case only).
        // A failure only means the close is a FIN instead: still a vanished client.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid fd and a `linger` value of the size passed.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }

    /// `true` when the server has closed this (idle) connection: what a
    /// careful client (hyper's pool, for one) checks before reusing it.
    pub fn peer_closed(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Ok(_) => true, // EOF, or bytes nobody asked for: unusable either way
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Sends `req` and reads the response head.
    pub async fn send_head(&mut self, req: &[u8], want_session: bool) -> Result<Head, HttpError> {
        self.decoder = None;
        if let Err(e) = self.stream.write_all(req).await {
            return Err(
                if e.kind() == io::ErrorKind::BrokenPipe
                    || e.kind() == io::ErrorKind::ConnectionReset
                {
                    HttpError::ClosedBeforeResponse
                } else {
                    HttpError::Broken(e.to_string())
                },
            );
        }
        let mut first = true;
        loop {
            if self.end > self.start {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(len)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut head = Head {
                            status,
                            close: resp.version == Some(0),
                            ..Head::default()
                        };
                        let mut framing = None;
                        for h in resp.headers.iter() {
                            let name = h.name;
                            if name.eq_ignore_ascii_case("content-length") {
                                let n = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse().ok())
                                    .ok_or_else(|| HttpError::Malformed("content-length".into()))?;
                                framing.get_or_insert(Framing::Length(n));
                            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                                if contains_ci(h.value, b"chunked") {
                                    framing = Some(Framing::Chunked(Chunk::Size));
                                }
                            } else if name.eq_ignore_ascii_case("connection") {
                                if contains_ci(h.value, b"close") {
                                    head.close = true;
                                }
                            } else if name.eq_ignore_ascii_case("content-type") {
                                head.event_stream = contains_ci(h.value, b"text/event-stream");
                            } else if want_session && name.eq_ignore_ascii_case("mcp-session-id") {
                                head.session = std::str::from_utf8(h.value).ok().map(str::to_owned);
                            } else if name.eq_ignore_ascii_case("x-served-by") {
                                head.served_by = Slot::parse(h.value);
                            }
                        }
                        let framing = match framing {
                            Some(f) => f,
                            None if status == 204 || status == 304 || status < 200 => {
                                Framing::Length(0)
                            }
                            None => {
                                head.close = true;
                                Framing::UntilEof
                            }
                        };
                        self.start += len;
                        self.decoder = Some(Decoder {
                            framing,
                            done: matches!(framing, Framing::Length(0)),
                        });
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(HttpError::Malformed(e.to_string())),
                }
            }
            match self.fill().await {
                Ok(0) if first && self.end == self.start => {
                    return Err(HttpError::ClosedBeforeResponse)
                }
                Ok(0) => return Err(HttpError::Broken("EOF in the response head".into())),
                Ok(_) => first = false,
                Err(e)
                    if first
                        && self.end == self.start
                        && e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    return Err(HttpError::ClosedBeforeResponse)
                }
                Err(e) => return Err(HttpError::Broken(e.to_string())),
            }
        }
    }

    /// Decodes body bytes into `self.body` (appending) until the body ends or,
    /// with `stop_on_data`, until some bytes arrived. `Ok(true)`: body complete.
    async fn decode_more(&mut self, stop_on_data: bool) -> Result<bool, HttpError> {
        let Some(mut dec) = self.decoder else {
            return Ok(true);
        };
        let before = self.body.len();
        let result = loop {
            if dec.done {
                break Ok(true);
            }
            if self.end > self.start {
                match dec.feed(&self.buf[self.start..self.end], &mut self.body) {
                    Ok(used) => self.start += used,
                    Err(e) => break Err(e),
                }
                if dec.done {
                    break Ok(true);
                }
                if stop_on_data && self.body.len() > before {
                    break Ok(false);
                }
            }
            match self.fill().await {
                Ok(0) => {
                    dec.done = true;
                    break if matches!(dec.framing, Framing::UntilEof) {
                        Ok(true)
                    } else {
                        Err(HttpError::Broken("EOF inside the body".into()))
                    };
                }
                Ok(_) => {}
                Err(e) => break Err(HttpError::Broken(e.to_string())),
            }
        };
        self.decoder = Some(dec);
        result
    }

    /// Reads the next piece of the body into `self.body` (replacing it).
    /// `Ok(false)` when the body has ended.
    pub async fn next_data(&mut self) -> Result<bool, HttpError> {
        self.body.clear();
        let done = self.decode_more(true).await?;
        Ok(!self.body.is_empty() || !done)
    }

    /// Reads the whole body into `self.body`.
    pub async fn read_body(&mut self) -> Result<(), HttpError> {
        self.body.clear();
        self.decode_more(false).await.map(|_| ())
    }

    /// One request, whole response (body in `self.body`).
    pub async fn roundtrip(&mut self, req: &[u8], want_session: bool) -> Result<Head, HttpError> {
        let head = self.send_head(req, want_session).await?;
        self.read_body().await?;
        Ok(head)
    }
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Writes a `POST` with a JSON body into `out` (cleared first).
pub fn write_post(out: &mut Vec<u8>, host: &str, path: &str, session: Option<&str>, body: &[u8]) {
    out.clear();
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n",
    );
    if let Some(s) = session {
        out.extend_from_slice(b"Mcp-Session-Id: ");
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\nMCP-Protocol-Version: 2025-06-18\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// A plain `GET` (an admin page).
pub fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// A `DELETE` of a Streamable HTTP session (written into `out`, cleared first).
pub fn write_delete(out: &mut Vec<u8>, host: &str, path: &str, session: &str) {
    out.clear();
    out.extend_from_slice(
        format!(
            "DELETE {path} HTTP/1.1\r\nHost: {host}\r\nMcp-Session-Id: {session}\r\n\
             MCP-Protocol-Version: 2025-06-18\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
}

/// A `GET` that asks for an event stream.
pub fn get_stream(host: &str, path: &str, session: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
    );
    if let Some(s) = session {
        out.push_str("Mcp-Session-Id: ");
        out.push_str(s);
        out.push_str("\r\nMCP-Protocol-Version: 2025-06-18\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The `initialize` request body.
pub const INITIALIZE: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"mcpflip-bench","version":"1"}}}"#;

/// The W1 call: a small `tools/call` with a small answer.
pub const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_document","arguments":{"id":"health"}}}"#;

/// The W3 call: answers with the slot's name, so flips are visible.
pub const WHOAMI: &[u8] =
    br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"whoami"}}"#;

/// Opens a Streamable HTTP session through `addr`: returns its `Mcp-Session-Id`.
pub async fn initialize(conn: &mut Conn, host: &str) -> Result<String, HttpError> {
    let mut req = Vec::with_capacity(512);
    write_post(&mut req, host, "/mcp", None, INITIALIZE);
    let head = conn.roundtrip(&req, true).await?;
    if head.status != 200 {
        return Err(HttpError::Malformed(format!(
            "initialize answered {}: {}",
            head.status,
            String::from_utf8_lossy(&conn.body)
        )));
    }
    let sid = head
        .session
        .ok_or_else(|| HttpError::Malformed("initialize answered without Mcp-Session-Id".into()))?;
    // The spec's next step; the built-in upstream answers 202.
    write_post(
        &mut req,
        host,
        "/mcp",
        Some(&sid),
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    conn.roundtrip(&req, false).await?;
    Ok(sid)
}
