//! The one Server-Sent-Events client parser, fed chunk by chunk as they come off the socket:
//! the AI providers' streams and the controller's table stream both go through it.
//!
//! Owns the framing rules only: LF, CR and CRLF line ends (even split across chunks), multi-line
//! `data:` fields, `event:` names, comments (`:` lines) ignored, dispatch on a blank line, and a
//! last event without its blank line flushed at EOF. Bytes are kept until a line ends, so a UTF-8
//! character split across two chunks arrives whole; a line longer than [`MAX_LINE_BYTES`] is an
//! error, not a buffer that grows forever. It knows nothing about what the data means (a table,
//! a provider's JSON, `[DONE]`): the callers decide that.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, when the server sent one.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The longest line accepted; a server sending more without a line end is broken.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// Incremental parser: [`SseParser::push`] each chunk, [`SseParser::finish`] at EOF.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The most data one event may gather (None: any number of lines of at most
    /// [`MAX_LINE_BYTES`]); past it the stream is refused.
    event_limit: Option<usize>,
    /// The previous chunk ended on `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    started: bool,
}

/// The stream is not SSE at all (a line longer than any real event).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event line is longer than {MAX_LINE_BYTES} bytes, or an event than its limit")]
pub struct SseTooLong;

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// A parser refusing an event whose data grows past `max` bytes (a stream from a server
    /// not trusted to end its events).
    pub fn with_event_limit(max: usize) -> SseParser {
        SseParser {
            event_limit: Some(max),
            ..SseParser::default()
        }
    }

    /// Feeds bytes; returns the events completed by them, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseTooLong> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                b'\n' => self.end_line(&mut out),
                _ => {
                    let gathered = self.line.len() + self.data.len();
                    if self.line.len() >= MAX_LINE_BYTES
                        || self.event_limit.is_some_and(|max| gathered >= max)
                    {
                        return Err(SseTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    /// The connection closed: a pending line and event are completed.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut out);
        }
        self.end_line(&mut out);
        out.pop()
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let raw = std::mem::take(&mut self.line);
        let mut line = String::from_utf8_lossy(&raw).into_owned();
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_string();
            }
        }
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event = None;
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields do not matter here.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c).unwrap());
        }
        out.extend(p.finish());
        out
    }

    fn data(d: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: d.into(),
        }
    }

    #[test]
    fn an_event_past_its_limit_ends_the_stream_however_its_lines_are_cut() {
        let mut p = SseParser::with_event_limit(12);
        assert_eq!(p.push(b"data: 12345\n\n").unwrap(), [data("12345")]);
        assert!(p.push(b"data: 12345\ndata: 67890\n").is_err());
    }

    #[test]
    fn lf_cr_and_crlf_line_ends_all_dispatch() {
        assert_eq!(
            parse_all(&[b"data: a\n\ndata: b\r\rdata: c\r\n\r\n"]),
            [data("a"), data("b"), data("c")]
        );
    }

    #[test]
    fn a_crlf_split_across_chunks_is_one_line_end() {
        assert_eq!(
            parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n", b"\r\n"]),
            [data("a"), data("b")]
        );
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        assert_eq!(
            parse_all(&[b"data: {\"a\":\ndata: 1}\n\n"]),
            [data("{\"a\":\n1}")]
        );
        assert_eq!(parse_all(&[b"data: a\ndata: b\n\n"]), [data("a\nb")]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        assert_eq!(
            parse_all(&[b": OPENROUTER PROCESSING\n\nid: 7\nretry: 10\ndata: x\n\n"]),
            [data("x")]
        );
    }

    #[test]
    fn event_names_are_kept_and_reset_per_event() {
        let evs = parse_all(&[b"event: ping\ndata: {}\n\ndata: y\n\n"]);
        assert_eq!(evs[0].event.as_deref(), Some("ping"));
        assert_eq!(evs[1].event, None);
    }

    #[test]
    fn an_event_split_anywhere_across_chunks_comes_out_whole() {
        let text = "event: content_block_delta\ndata: {\"t\":\"héllo\"}\n\n";
        let bytes = text.as_bytes();
        for cut in 1..bytes.len() {
            let evs = parse_all(&[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(evs.len(), 1, "cut at {cut}");
            assert_eq!(evs[0].data, "{\"t\":\"héllo\"}");
        }
    }

    #[test]
    fn a_last_event_without_its_blank_line_is_flushed_at_eof() {
        assert_eq!(parse_all(&[b"data: last"]), [data("last")]);
    }

    #[test]
    fn a_field_without_a_space_after_the_colon_is_read() {
        assert_eq!(parse_all(&[b"data:[DONE]\n\n"]), [data("[DONE]")]);
    }

    // Moved from proxy/controller_link.rs, whose own parser this one replaced.
    #[test]
    fn an_event_split_across_chunks_is_put_back_together() {
        let mut p = SseParser::default();
        assert!(p
            .push(b": keep-alive\n\nevent: table\ndata: {\"a\":")
            .unwrap()
            .is_empty());
        let evs = p.push(b"1}\n\ndata: x\r\n\r\n").unwrap();
        let datas: Vec<&str> = evs.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(datas, ["{\"a\":1}", "x"]);
    }

    #[test]
    fn a_utf8_character_split_across_two_chunks_arrives_intact() {
        let bytes = "data: {\"name\":\"zoë\"}\n\n".as_bytes();
        let cut = bytes.iter().position(|b| *b >= 0x80).unwrap() + 1;
        let mut p = SseParser::new();
        assert!(p.push(&bytes[..cut]).unwrap().is_empty());
        assert_eq!(p.push(&bytes[cut..]).unwrap(), [data("{\"name\":\"zoë\"}")]);
    }

    #[test]
    fn an_endless_line_is_refused_not_buffered_forever() {
        let mut p = SseParser::new();
        let chunk = vec![b'x'; 64 * 1024];
        let mut fed = 0;
        let refused = loop {
            match p.push(&chunk) {
                Ok(events) => assert!(events.is_empty()),
                Err(e) => break e,
            }
            fed += chunk.len();
            assert!(
                fed <= MAX_LINE_BYTES,
                "buffered {fed} bytes without a line end"
            );
        };
        assert_eq!(refused, SseTooLong);
        assert!(p.line.len() <= MAX_LINE_BYTES);
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        assert!(parse_all(&[b"\n\n\r\nevent: x\n\n"]).is_empty());
    }
}
