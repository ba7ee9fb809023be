//! W3C trace context: a request's `traceparent` (`00-<trace id>-<parent id>-<flags>`) is
//! accepted when well formed, or made, logged with the request, and returned with this
//! gateway's own span id. The trace id goes with the request's transfers (and wallets) to the
//! engine in a traced frame, and is journaled with each of their events (docs/HTTP.md,
//! "Tracing"; docs/PROTOCOL.md, "Traced requests").

use axum::http::HeaderMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// This gateway's span for the request.
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let parsed = headers.get("traceparent").and_then(|value| value.to_str().ok()).and_then(traceparent_parse);
        let span_id = (crate::ids::random_u128() as u64).max(1);
        match parsed {
            Some((trace_id, _parent, flags)) => TraceContext { trace_id, span_id, flags },
            None => TraceContext { trace_id: crate::ids::random_u128().max(1), span_id, flags: 1 },
        }
    }

    pub fn header_value(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// (trace id, parent id, flags) of a version-00 `traceparent`; all-zero ids are invalid.
pub fn traceparent_parse(text: &str) -> Option<(u128, u64, u8)> {
    let parts: Vec<&str> = text.trim().split('-').collect();
    let [version, trace, parent, flags] = parts[..] else { return None };
    let hex = |part: &str, length: usize| {
        part.len() == length && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if version != "00" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|&id| id != 0)?;
    let parent_id = u64::from_str_radix(parent, 16).ok().filter(|&id| id != 0)?;
    Some((trace_id, parent_id, u8::from_str_radix(flags, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_w3c_example_and_refuses_bad_ones() {
        let parsed = traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(parsed, Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)));
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(traceparent_parse(bad), None, "{bad}");
        }
    }
}
