//! Anthropic Messages API.
//!
//! Owns the request body (`max_tokens` always set, the system prompt in top-level `system`,
//! `temperature` clamped to 0..1 and never together with `top_p`, sampling parameters only when
//! configured), the non-streamed response (text blocks joined) and the streamed events (named
//! events, `ping`s, `event: error`, ending at `message_stop`; usage counts are cumulative).
//! Pure: no I/O. Headers (`x-api-key` / Bearer, `anthropic-version`) are set by the caller.

use serde::{Deserialize, Serialize};

use super::history::{Role, RoleMsg};
use super::reply::{parse_body, parse_data, Decoder, Finish, Outcome, StreamFault, Usage};
use super::target::Target;
use crate::hop::sse::SseEvent;

/// Anthropic requires `max_tokens`; this is sent when the endpoint sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

#[derive(Debug, Serialize)]
struct Request<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

/// The JSON body of a Messages call.
pub fn request_body(t: &Target, msgs: &[RoleMsg], stream: bool) -> Vec<u8> {
    // Newer models refuse both at once: temperature wins.
    let temperature = t.temperature.map(|x| x.clamp(0.0, 1.0));
    let top_p = if temperature.is_some() { None } else { t.top_p };
    let req = Request {
        model: &t.model,
        max_tokens: t.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: t.system_prompt.as_deref(),
        messages: msgs
            .iter()
            .map(|m| Message {
                role: match m.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                },
                content: &m.text,
            })
            .collect(),
        temperature,
        top_p,
        stream,
    };
    serde_json::to_vec(&req).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

fn finish_of(raw: &str) -> Finish {
    match raw {
        "max_tokens" | "model_context_window_exceeded" => Finish::Length,
        "refusal" => Finish::Filter,
        "tool_use" => Finish::Tool,
        _ => Finish::Stop,
    }
}

/// Reads a non-streamed answer.
pub fn parse_response(body: &[u8]) -> Result<Outcome, StreamFault> {
    let m: Answer = parse_body(body)?;
    let mut o = Outcome {
        usage: m.usage,
        ..Outcome::default()
    };
    for b in m.content.iter().filter(|b| b.kind == "text") {
        o.push(b.text.as_deref().unwrap_or_default());
    }
    o.note_finish(m.stop_reason, finish_of);
    Ok(o)
}

#[derive(Debug, Deserialize)]
struct StreamEvent {
    #[serde(rename = "type")]
    kind: String,
    message: Option<Answer>,
    content_block: Option<Block>,
    delta: Option<Delta>,
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    stop_reason: Option<String>,
}

/// Streamed events, ending at `message_stop`.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    outcome: Outcome,
}

impl Decoder for StreamDecoder {
    fn event(&mut self, ev: &SseEvent, deltas: &mut Vec<String>) -> Result<bool, StreamFault> {
        // `event: error` carries {"type":"error","error":{…}}: parse_data reports it.
        let e: StreamEvent = parse_data(&ev.data)?;
        let mut emit = |o: &mut Outcome, text: &str| {
            if !text.is_empty() {
                o.push(text);
                deltas.push(text.to_string());
            }
        };
        match e.kind.as_str() {
            "message_start" => {
                if let Some(u) = e.message.and_then(|m| m.usage) {
                    self.outcome.usage = Some(u);
                }
            }
            "content_block_start" => {
                if let Some(b) = e.content_block.filter(|b| b.kind == "text") {
                    emit(&mut self.outcome, b.text.as_deref().unwrap_or_default());
                }
            }
            "content_block_delta" => {
                // thinking_delta, input_json_delta… are not part of the visible answer.
                if let Some(d) = e.delta.filter(|d| d.kind.as_deref() == Some("text_delta")) {
                    emit(&mut self.outcome, d.text.as_deref().unwrap_or_default());
                }
            }
            "message_delta" => {
                if let Some(d) = e.delta {
                    self.outcome.note_finish(d.stop_reason, finish_of);
                }
                if let Some(u) = e.usage {
                    // Cumulative counts: the last value is the total.
                    let usage = self.outcome.usage.get_or_insert_with(Usage::default);
                    if u.output_tokens.is_some() {
                        usage.output_tokens = u.output_tokens;
                    }
                    if u.input_tokens.is_some() {
                        usage.input_tokens = u.input_tokens;
                    }
                }
            }
            "message_stop" => return Ok(true),
            _ => {} // ping, content_block_stop, and event types added later.
        }
        Ok(false)
    }

    fn outcome(&mut self) -> &mut Outcome {
        &mut self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ai::target::tests::target;
    use serde_json::{json, Value};

    fn body(t: &Target) -> Value {
        let msgs = [RoleMsg {
            role: Role::User,
            text: "[alice]: hi".into(),
        }];
        serde_json::from_slice(&request_body(t, &msgs, true)).unwrap()
    }

    #[test]
    fn the_system_prompt_is_top_level_and_max_tokens_is_always_set() {
        let t = target(
            "{name: A, provider: anthropic, model: claude-sonnet-4-5, system_prompt: Be terse.}",
        );
        assert_eq!(
            body(&t),
            json!({"model":"claude-sonnet-4-5","max_tokens":1024,"system":"Be terse.",
                   "messages":[{"role":"user","content":"[alice]: hi"}],"stream":true})
        );
    }

    #[test]
    fn temperature_is_clamped_and_never_sent_with_top_p() {
        let t = target(
            "{name: A, provider: anthropic, model: c, temperature: 1.4, top_p: 0.9, max_tokens: 5}",
        );
        let b = body(&t);
        assert_eq!(b["temperature"], 1.0);
        assert!(b.get("top_p").is_none(), "{b}");
        assert_eq!(b["max_tokens"], 5);
        let t = target("{name: A, provider: anthropic, model: c, top_p: 0.9}");
        assert_eq!(body(&t)["top_p"], 0.9);
    }

    #[test]
    fn a_non_streamed_answer_joins_its_text_blocks() {
        let o = parse_response(
            br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"thinking","thinking":"x"},{"type":"text","text":"Hel"},{"type":"text","text":"lo"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(o.text, "Hello");
        assert_eq!(o.finish, Some(Finish::Stop));
    }

    #[test]
    fn a_stream_with_pings_yields_text_and_cumulative_usage() {
        let mut d = StreamDecoder::default();
        let mut out = Vec::new();
        let events = [
            r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"model":"m","stop_reason":null,"usage":{"input_tokens":11,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":6}}"#,
        ];
        for data in events {
            let ev = SseEvent {
                event: None,
                data: data.into(),
            };
            assert!(!d.event(&ev, &mut out).unwrap());
        }
        let stop = SseEvent {
            event: Some("message_stop".into()),
            data: r#"{"type":"message_stop"}"#.into(),
        };
        assert!(d.event(&stop, &mut out).unwrap());
        assert_eq!(out, ["Hi", " there"]);
        assert_eq!(
            d.outcome().usage,
            Some(Usage {
                input_tokens: Some(11),
                output_tokens: Some(6)
            })
        );
    }

    #[test]
    fn an_error_event_is_a_fault_with_its_type() {
        let mut d = StreamDecoder::default();
        let ev = SseEvent {
            event: Some("error".into()),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                .into(),
        };
        match d.event(&ev, &mut Vec::new()) {
            Err(StreamFault::Provider(p)) => {
                assert_eq!(p.kind.as_deref(), Some("overloaded_error"))
            }
            other => panic!("expected a fault, got {other:?}"),
        }
    }

    #[test]
    fn a_refusal_stop_reason_is_a_filter() {
        let o = parse_response(br#"{"content":[],"stop_reason":"refusal"}"#).unwrap();
        assert_eq!(o.finish, Some(Finish::Filter));
    }
}
