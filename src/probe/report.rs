//! What a probe reports: the steps it ran, each with its time and, on failure,
//! the HTTP status and an excerpt of the body. Serialized as is into the control
//! protocol's replies, and read back by `mcpflip ctl`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::probe::events::EventError;

/// The outcome of one probe, as the control protocol reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub ok: bool,
    pub slot: String,
    pub transport: Cow<'static, str>,
    /// The protocol version the server chose.
    pub protocol: Option<String>,
    pub ms: u64,
    /// Tool names from `tools/list`, sorted.
    pub tools: Vec<String>,
    pub steps: Vec<Step>,
    /// One line saying what failed (the failed step's detail), when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub step: Cow<'static, str>,
    pub ok: bool,
    pub ms: u64,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// An excerpt of the body that made the step fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Why a step failed.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) detail: String,
    pub(crate) status: Option<u16>,
    pub(crate) body: Option<String>,
}

impl Fail {
    pub(crate) fn new(detail: impl Into<String>) -> Self {
        Fail {
            detail: detail.into(),
            status: None,
            body: None,
        }
    }
}

/// How much of a failing body a step quotes.
const EXCERPT: usize = 300;

/// The first characters of `s`, for a report.
pub(crate) fn excerpt(s: &str) -> String {
    let mut end = s.len().min(EXCERPT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}…", &s[..end])
    } else {
        s.to_owned()
    }
}

impl From<EventError> for Fail {
    fn from(e: EventError) -> Self {
        Fail::new(e.to_string())
    }
}
