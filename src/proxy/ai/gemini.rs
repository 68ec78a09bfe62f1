//! Google Gemini (Generative Language API).
//!
//! Owns the request body (`contents` with roles `user`/`model`, the system prompt in
//! `systemInstruction`, parameters in `generationConfig`, camelCase) and the answers: a
//! non-streamed `GenerateContentResponse`, or (with `:streamGenerateContent?alt=sse`) one such
//! response per `data:` event with no terminator, the stream ending when the connection closes.
//! Handles prompt blocks (`promptFeedback.blockReason`, no candidates), safety finishes with empty
//! content, `STOP` without parts, and `thought: true` parts (never shown). Pure: no I/O; the key
//! goes in the `x-goog-api-key` header, set by the caller.

use serde::{Deserialize, Serialize};

use super::history::{Role, RoleMsg};
use super::reply::{parse_body, parse_data, Decoder, Finish, Outcome, StreamFault, Usage};
use super::target::Target;
use crate::hop::sse::SseEvent;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Instruction<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Debug, Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: [TextPart<'a>; 1],
}

#[derive(Debug, Serialize)]
struct Instruction<'a> {
    parts: [TextPart<'a>; 1],
}

#[derive(Debug, Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
}

/// The JSON body of a generateContent call.
pub fn request_body(t: &Target, msgs: &[RoleMsg]) -> Vec<u8> {
    let config = GenerationConfig {
        temperature: t.temperature.map(|x| x.clamp(0.0, 2.0)),
        top_p: t.top_p,
        max_output_tokens: t.max_tokens,
    };
    let empty = config.temperature.is_none()
        && config.top_p.is_none()
        && config.max_output_tokens.is_none();
    let req = Request {
        contents: msgs
            .iter()
            .map(|m| Content {
                role: match m.role {
                    Role::User => "user",
                    Role::Assistant => "model",
                },
                parts: [TextPart { text: &m.text }],
            })
            .collect(),
        system_instruction: t.system_prompt.as_deref().map(|s| Instruction {
            parts: [TextPart { text: s }],
        }),
        generation_config: (!empty).then_some(config),
    };
    serde_json::to_vec(&req).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    candidates: Option<Vec<Candidate>>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CandidateContent {
    parts: Option<Vec<Part>>,
}

#[derive(Debug, Deserialize)]
struct Part {
    text: Option<String>,
    thought: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
    block_reason_message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
}

fn finish_of(raw: &str) -> Finish {
    match raw {
        "STOP" => Finish::Stop,
        "MAX_TOKENS" => Finish::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => Finish::Filter,
        r if r.starts_with("IMAGE_") => Finish::Filter,
        _ => Finish::Error,
    }
}

/// Folds one response (the whole answer, or one streamed chunk) into `o`; returns its new text.
fn absorb(o: &mut Outcome, r: Response) -> String {
    if let Some(u) = r.usage_metadata {
        // Repeated per chunk: keep the last.
        o.usage = Some(Usage {
            input_tokens: u.prompt_token_count,
            output_tokens: u.candidates_token_count,
        });
    }
    if let Some(reason) =
        r.prompt_feedback
            .and_then(|f| match (f.block_reason, f.block_reason_message) {
                (Some(r), Some(m)) => Some(format!("{r}: {m}")),
                (Some(r), None) => Some(r),
                _ => None,
            })
    {
        o.blocked = Some(reason);
    }
    let mut text = String::new();
    if let Some(c) = r.candidates.and_then(|c| c.into_iter().next()) {
        for p in c.content.and_then(|c| c.parts).unwrap_or_default() {
            if p.thought != Some(true) {
                text.push_str(p.text.as_deref().unwrap_or_default());
            }
        }
        o.note_finish(c.finish_reason, finish_of);
    }
    o.push(&text);
    text
}

/// Reads a non-streamed answer.
pub fn parse_response(body: &[u8]) -> Result<Outcome, StreamFault> {
    let r: Response = parse_body(body)?;
    let mut o = Outcome::default();
    absorb(&mut o, r);
    Ok(o)
}

/// Streamed responses; the stream ends when the connection closes.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    outcome: Outcome,
}

impl Decoder for StreamDecoder {
    fn event(&mut self, ev: &SseEvent, deltas: &mut Vec<String>) -> Result<bool, StreamFault> {
        let r: Response = parse_data(&ev.data)?;
        let text = absorb(&mut self.outcome, r);
        if !text.is_empty() {
            deltas.push(text);
        }
        Ok(false)
    }

    fn complete_at_eof(&self) -> bool {
        // awc reports a dropped chunked connection as a clean end: a stream cut before its
        // last chunk (which carries finishReason) must not pass for a complete reply.
        self.outcome.finish.is_some() || self.outcome.blocked.is_some()
    }

    fn outcome(&mut self) -> &mut Outcome {
        &mut self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ai::history::tests::three_turns;
    use crate::proxy::ai::target::tests::target;
    use serde_json::{json, Value};

    #[test]
    fn roles_are_user_and_model_and_the_system_prompt_is_a_system_instruction() {
        let t = target("{name: G, provider: gemini, model: gemini-2.5-flash, system_prompt: Be terse., temperature: 0.7, top_p: 0.9, max_tokens: 64}");
        let b: Value = serde_json::from_slice(&request_body(&t, &three_turns())).unwrap();
        assert_eq!(
            b,
            json!({"contents":[{"role":"user","parts":[{"text":"[alice]: hi"}]},
                               {"role":"model","parts":[{"text":"hello"}]},
                               {"role":"user","parts":[{"text":"[alice]: 2+2?"}]}],
                   "systemInstruction":{"parts":[{"text":"Be terse."}]},
                   "generationConfig":{"temperature":0.7,"topP":0.9,"maxOutputTokens":64}})
        );
    }

    #[test]
    fn no_generation_config_is_sent_when_nothing_is_configured() {
        let t = target("{name: G, provider: gemini, model: m}");
        let b: Value = serde_json::from_slice(&request_body(&t, &[])).unwrap();
        assert!(
            b.get("generationConfig").is_none() && b.get("systemInstruction").is_none(),
            "{b}"
        );
    }

    #[test]
    fn thought_parts_are_not_shown() {
        let o = parse_response(
            br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"let me think","thought":true},{"text":"4"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1,"thoughtsTokenCount":9}}"#,
        )
        .unwrap();
        assert_eq!(o.text, "4");
        assert_eq!(o.usage.unwrap().output_tokens, Some(1));
    }

    #[test]
    fn a_prompt_block_without_candidates_is_reported() {
        let o = parse_response(br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":4}}"#)
            .unwrap();
        assert_eq!(o.blocked.as_deref(), Some("PROHIBITED_CONTENT"));
    }

    #[test]
    fn a_safety_finish_and_a_stop_without_parts_are_read() {
        let o = parse_response(br#"{"candidates":[{"finishReason":"SAFETY","safetyRatings":[]}]}"#)
            .unwrap();
        assert_eq!(o.finish, Some(Finish::Filter));
        let o = parse_response(
            br#"{"candidates":[{"content":{"role":"model"},"finishReason":"STOP"}]}"#,
        )
        .unwrap();
        assert_eq!((o.text.as_str(), o.finish), ("", Some(Finish::Stop)));
    }

    #[test]
    fn a_stream_cut_before_its_finish_reason_is_not_complete() {
        let mut d = StreamDecoder::default();
        let data = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]}}]}"#;
        d.event(
            &SseEvent {
                event: None,
                data: data.into(),
            },
            &mut Vec::new(),
        )
        .unwrap();
        assert!(!d.complete_at_eof());
    }

    #[test]
    fn a_stream_yields_each_chunks_text_and_keeps_the_last_finish() {
        let mut d = StreamDecoder::default();
        let mut out = Vec::new();
        for data in [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"finishReason":"STOP"}]}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"plan","thought":true}]}}]}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"candidatesTokenCount":2}}"#,
        ] {
            assert!(!d
                .event(
                    &SseEvent {
                        event: None,
                        data: data.into()
                    },
                    &mut out
                )
                .unwrap());
        }
        assert_eq!(out, ["Hel", "lo"]);
        assert_eq!(d.outcome().finish, Some(Finish::Length));
        assert!(d.complete_at_eof());
    }
}
