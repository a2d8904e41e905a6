//! Plain HTTP sent to the TLS listener: answered `400` with a body that says
//! to use `https://`, where the TLS handshake would fail with a record the
//! client shows as "wrong version number" or an empty reply (nginx answers
//! "The plain HTTP request was sent to HTTPS port" the same way).
//!
//! Only the first byte is looked at, peeked and not consumed: a TLS connection
//! opens with a handshake record (0x16), an HTTP/1 request line or the HTTP/2
//! preface with an ASCII capital letter. The answer is fixed bytes; the
//! request is read once into a bounded buffer and never parsed. The caller
//! bounds every step in time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 76\r\n\
Connection: close\r\n\
\r\n\
This port speaks HTTPS: plain HTTP was sent to it. Use https:// in the URL.\n";

/// Whether the client opened with plain HTTP instead of a TLS handshake.
pub async fn is_plain_http(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    Ok(n == 1 && first[0].is_ascii_uppercase())
}

/// Answers the 400 and closes. The request is read first (one read, 8 KiB at
/// most) and the client's close awaited briefly, so that closing with unread
/// bytes does not reset the connection before the client reads the answer.
pub async fn refuse(mut tcp: TcpStream) {
    let mut buf = [0u8; 8192];
    let _ = tcp.read(&mut buf).await;
    if tcp.write_all(ANSWER).await.is_err() {
        return;
    }
    let _ = tcp.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::ANSWER;

    #[test]
    fn the_answer_is_well_formed() {
        let text = std::str::from_utf8(ANSWER).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert_eq!(body.len(), length);
    }
}
