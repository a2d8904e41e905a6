//! The session tag codec: `mf1.<slot>.<generation>.` put before the upstream's own
//! session id, in the `Mcp-Session-Id` header (Streamable HTTP) or in the
//! `sessionId` / `session_id` query parameter of the legacy SSE POST URL. It is
//! visible ASCII, versioned (`mf1`), and decoded with no lookup, so a restarted
//! proxy or a second instance with the same config routes a session identically.

use std::sync::Arc;

use http::HeaderValue;

/// The version prefix of every tag this proxy writes.
pub const TAG_VERSION: &str = "mf1.";

/// A decoded tag: which slot and generation, and the upstream's own id.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct SessionTag<'a> {
    pub slot: &'a str,
    pub generation: u32,
    /// The upstream's session id, exactly as it issued it.
    pub inner: &'a str,
}

impl<'a> SessionTag<'a> {
    /// Decodes `mf1.<slot>.<gen>.<inner>`; `None` when it is not one of ours.
    pub fn decode(s: &'a str) -> Option<Self> {
        let rest = s.strip_prefix(TAG_VERSION)?;
        // Byte scans, not `split_once` and `parse` (half the instructions on
        // every pinned request: bench/PROFILE.md §15).
        let dot = memchr::memchr(b'.', rest.as_bytes())?;
        let (slot, rest) = (&rest[..dot], &rest[dot + 1..]);
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        // One spelling per tag: `mf1.blue.03.` is not `mf1.blue.3.`, the
        // prefix the proxy writes and strips.
        if slot.is_empty()
            || digits == 0
            || rest.as_bytes().get(digits) != Some(&b'.')
            || (digits > 1 && rest.starts_with('0'))
        {
            return None;
        }
        let generation = rest.as_bytes()[..digits].iter().try_fold(0u32, |n, &d| {
            n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })?;
        Some(SessionTag {
            slot,
            generation,
            inner: &rest[digits + 1..],
        })
    }

    /// Length of the tag prefix before `inner`.
    pub fn prefix_len(&self, full: &str) -> usize {
        full.len() - self.inner.len()
    }
}

/// The tag prefix for sessions created on slot `name` at `generation`
/// (`mf1.blue.3.`); slots keep theirs in `Slot::tag_prefix`.
pub fn tag_prefix(name: &str, generation: u32) -> Arc<str> {
    Arc::from(format!("{TAG_VERSION}{name}.{generation}."))
}

/// Tags an upstream session id header value with `prefix` (a slot's
/// [`tag_prefix`]): one allocation, no formatting.
pub fn tag_header(prefix: &str, inner: &HeaderValue) -> Option<HeaderValue> {
    let inner = inner.as_bytes();
    if !visible(inner) {
        return None;
    }
    let mut v = Vec::with_capacity(prefix.len() + inner.len());
    v.extend_from_slice(prefix.as_bytes());
    v.extend_from_slice(inner);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
}

/// [`tag_header`], which gives back `sent` (the tagged id the request
/// carried) when that is exactly `prefix` + `inner`: a session's own id,
/// answered on each of its requests, then costs no allocation and no copy.
pub fn tag_header_as(
    prefix: &str,
    inner: &HeaderValue,
    sent: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    if let Some(sent) = sent {
        let (s, i) = (sent.as_bytes(), inner.as_bytes());
        if s.len() == prefix.len() + i.len()
            && s.starts_with(prefix.as_bytes())
            && &s[prefix.len()..] == i
            && visible(i)
        {
            return Some(sent.clone());
        }
    }
    tag_header(prefix, inner)
}

/// MCP session ids are visible ASCII (0x21..=0x7E); anything else is left untagged.
fn visible(id: &[u8]) -> bool {
    id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Where a session tag was found in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagSite {
    /// `Mcp-Session-Id` header, whose tag prefix is this long.
    Header { prefix_len: usize },
    /// Query parameter at this byte offset of the query string, with this prefix length.
    Query { value_at: usize, prefix_len: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_round_trip() {
        let t = SessionTag::decode("mf1.blue.3.abc.def").expect("a tag");
        assert_eq!(
            t,
            SessionTag {
                slot: "blue",
                generation: 3,
                inner: "abc.def"
            }
        );
        assert_eq!(t.prefix_len("mf1.blue.3.abc.def"), "mf1.blue.3.".len());
        assert_eq!(SessionTag::decode("abc"), None);
        assert_eq!(SessionTag::decode("mf1.blue.x.abc"), None);
        assert_eq!(SessionTag::decode("mf1.blue.3"), None);
        assert_eq!(SessionTag::decode("mf2.blue.3.abc"), None);
    }

    /// The decoder as it was written first, with `split_once` and `parse`.
    fn reference(s: &str) -> Option<SessionTag<'_>> {
        let rest = s.strip_prefix(TAG_VERSION)?;
        let (slot, rest) = rest.split_once('.')?;
        let (generation, inner) = rest.split_once('.')?;
        if slot.is_empty()
            || generation.is_empty()
            || !generation.bytes().all(|b| b.is_ascii_digit())
            || (generation.len() > 1 && generation.starts_with('0'))
        {
            return None;
        }
        Some(SessionTag {
            slot,
            generation: generation.parse().ok()?,
            inner,
        })
    }

    #[test]
    fn a_session_answered_its_own_id_gets_the_value_it_sent() {
        let prefix = "mf1.blue.3.";
        let sent = HeaderValue::from_static("mf1.blue.3.abc");
        for (inner, sent) in [
            ("abc", Some(&sent)),
            ("abd", Some(&sent)),
            ("ab", Some(&sent)),
            ("abc", None),
            ("a b", Some(&HeaderValue::from_static("mf1.blue.3.a b"))),
            ("abc", Some(&HeaderValue::from_static("mf1.green.3.abc"))),
        ] {
            let inner = HeaderValue::from_static(inner);
            assert_eq!(
                tag_header_as(prefix, &inner, sent),
                tag_header(prefix, &inner),
                "{inner:?} after {sent:?}"
            );
        }
        assert_eq!(
            tag_header_as(prefix, &HeaderValue::from_static("abc"), Some(&sent))
                .expect("tagged")
                .as_bytes()
                .as_ptr(),
            sent.as_bytes().as_ptr(),
            "the same bytes, not a copy"
        );
    }

    #[test]
    fn the_byte_scan_decodes_as_the_reference_does() {
        for s in [
            "mf1.blue.3.abc",
            "mf1.blue.3.",
            "mf1.blue.3",
            "mf1.blue..abc",
            "mf1..3.abc",
            "mf1.blue.03.abc",
            "mf1.blue.0.abc",
            "mf1.blue.00.abc",
            "mf1.blue.3x.abc",
            "mf1.blue.+3.abc",
            "mf1.blue.4294967295.a",
            "mf1.blue.4294967296.a",
            "mf1.blue.99999999999999999999.a",
            "mf1.b.l.u.e",
            "mf1.blue.3.a.b.c",
            "mf1.",
            "mf1",
            "",
            "mf1.blue",
            "mf1.blue.",
            "mf1.é.3.x",
            "mf1.blue.٣.x",
        ] {
            assert_eq!(SessionTag::decode(s), reference(s), "{s:?}");
        }
    }
}
