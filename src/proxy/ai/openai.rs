//! OpenAI Chat Completions and the APIs shaped like it: Mistral and OpenAI-compatible servers
//! (Ollama, vLLM, LiteLLM, llama.cpp).
//!
//! Owns the request body with a per-provider allow-list of fields (never a pass-through):
//! - OpenAI: `max_completion_tokens`, `stream_options.include_usage`; for reasoning models
//!   (o-series, GPT-5) the system prompt goes in a `developer` message and `temperature` /
//!   `top_p` are left out.
//! - Mistral: `model, messages, temperature, top_p, max_tokens, stream` only (unknown fields get
//!   422); no `name`, no `stream_options`, no `max_completion_tokens`.
//! - OpenAI-compatible: `max_tokens` (Ollama ignores `max_completion_tokens`), temperature and
//!   top_p when configured (Ollama otherwise forces 1.0), `stream_options.include_usage`.
//!
//! Also the non-streamed response and the streamed chunks (`data:` only, ending in `[DONE]`).
//! Pure: no I/O.

use serde::{Deserialize, Serialize};

use crate::config::{ChatDialect, WireFormat};

use super::history::{Role, RoleMsg};
use super::reply::{parse_body, parse_data, Decoder, Finish, Outcome, StreamFault, Usage};
use super::target::Target;
use crate::hop::sse::SseEvent;

/// Which dialect of the chat-completions API the target's provider speaks.
fn dialect(t: &Target) -> ChatDialect {
    match t.provider.spec().format {
        WireFormat::OpenaiChat(d) => d,
        // Only chat-completions targets are asked in this format.
        _ => ChatDialect::OpenAi,
    }
}

/// o1/o3/o4 and GPT-5-class models: `developer` role, no sampling parameters.
pub fn is_reasoning_model(model: &str) -> bool {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let o_series = ["o1", "o3", "o4"]
        .iter()
        .any(|p| m == *p || m.starts_with(&format!("{p}-")));
    o_series || (m.starts_with("gpt-5") && !m.contains("chat"))
}

#[derive(Debug, Serialize)]
struct Request<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The JSON body of a chat-completions call.
pub fn request_body(t: &Target, msgs: &[RoleMsg], stream: bool) -> Vec<u8> {
    let f = dialect(t);
    let reasoning = f == ChatDialect::OpenAi && is_reasoning_model(&t.model);
    let mut messages = Vec::with_capacity(msgs.len() + 1);
    if let Some(s) = &t.system_prompt {
        messages.push(Message {
            role: if reasoning { "developer" } else { "system" },
            content: s,
        });
    }
    messages.extend(msgs.iter().map(|m| Message {
        role: match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        },
        content: &m.text,
    }));
    let (temperature, top_p) = if reasoning {
        (None, None)
    } else {
        (
            t.temperature.map(|x| x.clamp(0.0, 2.0)),
            t.top_p.map(|x| x.clamp(0.0, 1.0)),
        )
    };
    let req = Request {
        model: &t.model,
        messages,
        temperature,
        top_p,
        max_completion_tokens: if f == ChatDialect::OpenAi {
            t.max_tokens
        } else {
            None
        },
        max_tokens: if f == ChatDialect::OpenAi {
            None
        } else {
            t.max_tokens
        },
        stream,
        stream_options: (stream && f != ChatDialect::Mistral).then_some(StreamOptions {
            include_usage: true,
        }),
    };
    serde_json::to_vec(&req).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
    delta: Option<ChoiceMessage>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    content: Option<Content>,
    refusal: Option<String>,
}

/// A string, or (Mistral) an array of typed chunks of which only `text` ones are shown.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
}

impl Content {
    fn visible(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter(|p| p.kind.as_deref().is_none_or(|k| k == "text"))
                .filter_map(|p| p.text.as_deref())
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

fn finish_of(raw: &str) -> Finish {
    match raw {
        "length" | "model_length" => Finish::Length,
        "content_filter" => Finish::Filter,
        "tool_calls" | "function_call" => Finish::Tool,
        "error" => Finish::Error,
        _ => Finish::Stop,
    }
}

/// Reads a non-streamed answer.
pub fn parse_response(body: &[u8]) -> Result<Outcome, StreamFault> {
    let c: Completion = parse_body(body)?;
    let mut o = Outcome {
        usage: c.usage.map(Usage::from),
        ..Outcome::default()
    };
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| StreamFault::Malformed("the answer has no choices".into()))?;
    if let Some(m) = choice.message {
        if let Some(content) = m.content {
            o.push(&content.visible());
        }
        o.refusal = m.refusal.filter(|r| !r.trim().is_empty());
    }
    o.note_finish(choice.finish_reason, finish_of);
    Ok(o)
}

/// Streamed chunks, ending in `data: [DONE]`.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    outcome: Outcome,
    refusal: String,
}

impl Decoder for StreamDecoder {
    fn event(&mut self, ev: &SseEvent, deltas: &mut Vec<String>) -> Result<bool, StreamFault> {
        if ev.data.trim() == "[DONE]" {
            if !self.refusal.is_empty() {
                self.outcome.refusal = Some(std::mem::take(&mut self.refusal));
            }
            return Ok(true);
        }
        let chunk: Completion = parse_data(&ev.data)?;
        if let Some(u) = chunk.usage {
            self.outcome.usage = Some(u.into());
        }
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(d) = choice.delta {
                if let Some(text) = d.content.map(|c| c.visible()).filter(|t| !t.is_empty()) {
                    self.outcome.push(&text);
                    deltas.push(text);
                }
                if let Some(r) = d.refusal {
                    self.refusal.push_str(&r);
                }
            }
            self.outcome.note_finish(choice.finish_reason, finish_of);
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
    use crate::proxy::ai::history::tests::three_turns;
    use crate::proxy::ai::target::tests::target;
    use serde_json::{json, Value};

    fn body(t: &Target, stream: bool) -> Value {
        serde_json::from_slice(&request_body(t, &three_turns(), stream)).unwrap()
    }

    #[test]
    fn openai_gets_a_system_message_and_max_completion_tokens() {
        let t = target("{name: B, provider: openai, model: gpt-4o-mini, system_prompt: Be terse., temperature: 0.7, max_tokens: 99}");
        assert_eq!(
            body(&t, true),
            json!({"model":"gpt-4o-mini","messages":[
                {"role":"system","content":"Be terse."},
                {"role":"user","content":"[alice]: hi"},
                {"role":"assistant","content":"hello"},
                {"role":"user","content":"[alice]: 2+2?"}],
              "temperature":0.7,"max_completion_tokens":99,"stream":true,
              "stream_options":{"include_usage":true}})
        );
    }

    #[test]
    fn reasoning_models_get_a_developer_message_and_no_temperature() {
        for model in ["o3-mini", "o1", "gpt-5", "gpt-5-mini", "openai/o4-mini"] {
            assert!(is_reasoning_model(model), "{model}");
        }
        for model in ["gpt-4o", "gpt-5-chat-latest", "o1x", "llama3"] {
            assert!(!is_reasoning_model(model), "{model}");
        }
        let t = target("{name: B, provider: openai, model: gpt-5-mini, system_prompt: S, temperature: 0.7, top_p: 0.9, max_tokens: 9}");
        let b = body(&t, false);
        assert_eq!(b["messages"][0], json!({"role":"developer","content":"S"}));
        assert!(
            b.get("temperature").is_none() && b.get("top_p").is_none(),
            "{b}"
        );
        assert_eq!(b["max_completion_tokens"], 9);
        assert!(b.get("stream").is_none(), "{b}");
    }

    #[test]
    fn mistral_gets_only_the_fields_it_accepts() {
        let t = target("{name: M, provider: mistral, model: mistral-small-latest, system_prompt: S, temperature: 0.3, top_p: 0.9, max_tokens: 50}");
        let b = body(&t, true);
        let mut keys: Vec<&str> = b.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "max_tokens",
                "messages",
                "model",
                "stream",
                "temperature",
                "top_p"
            ]
        );
        for m in b["messages"].as_array().unwrap() {
            let mut k: Vec<&str> = m.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            k.sort();
            assert_eq!(k, ["content", "role"]);
        }
    }

    #[test]
    fn an_openai_compatible_server_gets_max_tokens_and_explicit_sampling() {
        let t = target("{name: L, provider: openai_compatible, model: llama3, base_url: 'http://h:1/v1', temperature: 0.2, top_p: 0.5, max_tokens: 7}");
        let b = body(&t, true);
        assert_eq!(b["max_tokens"], 7);
        assert!(b.get("max_completion_tokens").is_none());
        assert_eq!(
            (b["temperature"].as_f64(), b["top_p"].as_f64()),
            (Some(0.2), Some(0.5))
        );
    }

    #[test]
    fn a_non_streamed_answer_yields_text_finish_and_usage() {
        let o = parse_response(
            br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"4","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
        )
        .unwrap();
        assert_eq!(o.text, "4");
        assert_eq!(o.finish, Some(Finish::Stop));
        assert_eq!(o.usage.unwrap().output_tokens, Some(1));
    }

    #[test]
    fn mistral_array_content_shows_only_text_chunks() {
        let o = parse_response(
            br#"{"choices":[{"message":{"content":[{"type":"thinking","thinking":[{"type":"text","text":"hmm"}]},{"type":"text","text":"Paris"}]},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert_eq!(o.text, "Paris");
    }

    #[test]
    fn a_stream_yields_deltas_and_ends_at_done() {
        let mut d = StreamDecoder::default();
        let mut out = Vec::new();
        let ev = |data: &str| SseEvent {
            event: None,
            data: data.into(),
        };
        for data in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"obfuscation":"x"}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        ] {
            assert!(!d.event(&ev(data), &mut out).unwrap());
        }
        assert!(d.event(&ev("[DONE]"), &mut out).unwrap());
        assert_eq!(out, ["Hel", "lo"]);
        assert_eq!(d.outcome().finish, Some(Finish::Stop));
        assert_eq!(d.outcome().usage.unwrap().input_tokens, Some(3));
    }

    #[test]
    fn an_error_inside_the_stream_is_a_fault() {
        let mut d = StreamDecoder::default();
        let ev = SseEvent {
            event: None,
            data: r#"{"error":{"message":"The server had an error","type":"server_error"}}"#.into(),
        };
        assert!(matches!(
            d.event(&ev, &mut Vec::new()),
            Err(StreamFault::Provider(_))
        ));
    }
}
