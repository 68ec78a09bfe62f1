//! A provider's answer in provider-neutral form, and the rules that turn it into a reply or an
//! error: safety blocks, refusals, empty replies, replies cut short by the provider.
//!
//! Owns [`AiReply`], [`Finish`], [`Usage`], the [`Outcome`] every provider decoder fills, and the
//! [`Decoder`] interface streamed answers go through. Pure: no I/O.

use super::error::{AiError, ProviderError};
use crate::hop::sse::SseEvent;

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// It finished its answer.
    Stop,
    /// It hit `max_tokens` (or its context window): the text is cut short.
    Length,
    /// A safety filter or refusal stopped it.
    Filter,
    /// It wanted to call a tool (none are offered, so this is rare).
    Tool,
    /// The provider ended it with an error reason.
    Error,
}

/// Tokens used, when the provider says (Anthropic's `usage` has this very shape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

/// A complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiReply {
    /// The whole text (every delta sent on `Ask::deltas`, concatenated).
    pub text: String,
    /// [`Finish::Stop`], or [`Finish::Length`] when the reply was cut at `max_tokens`.
    pub finish: Finish,
    pub usage: Option<Usage>,
}

/// What a provider answered, before the rules of [`Outcome::into_reply`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub text: String,
    pub finish: Option<Finish>,
    /// The provider's own finish word, for messages.
    pub finish_raw: Option<String>,
    pub usage: Option<Usage>,
    /// The model's refusal text (OpenAI `refusal`).
    pub refusal: Option<String>,
    /// The prompt was blocked (Gemini `promptFeedback.blockReason`).
    pub blocked: Option<String>,
}

impl Outcome {
    /// Appends visible text.
    pub fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// Notes the provider's finish word, as `finish_of` reads it. An empty word (older Ollama
    /// sends `""` for null) is none; a later word replaces an earlier one (Mistral may put it on
    /// a later chunk).
    pub fn note_finish(&mut self, raw: Option<String>, finish_of: fn(&str) -> Finish) {
        if let Some(r) = raw.filter(|r| !r.is_empty()) {
            self.finish = Some(finish_of(&r));
            self.finish_raw = Some(r);
        }
    }

    /// The reply the user gets, or why there is none.
    pub fn into_reply(
        self,
        provider: &'static str,
        max_tokens: Option<u32>,
    ) -> Result<AiReply, AiError> {
        let raw = self
            .finish_raw
            .clone()
            .unwrap_or_else(|| "none".to_string());
        if let Some(reason) = self.blocked {
            return Err(AiError::Blocked {
                provider,
                reason: format!("the prompt was blocked: {reason}"),
                partial: self.text,
            });
        }
        if self.finish == Some(Finish::Filter) {
            let reason = match &self.refusal {
                Some(r) => format!("the model refused: {}", r.trim()),
                None => format!("finish reason {raw}"),
            };
            return Err(AiError::Blocked {
                provider,
                reason,
                partial: self.text,
            });
        }
        if self.text.trim().is_empty() {
            if let Some(r) = &self.refusal {
                return Err(AiError::Blocked {
                    provider,
                    reason: format!("the model refused: {}", r.trim()),
                    partial: String::new(),
                });
            }
        }
        if self.finish == Some(Finish::Error) {
            return Err(AiError::BrokeOff {
                provider,
                reason: format!("{provider} ended it with finish reason {raw}"),
                partial: self.text,
            });
        }
        if self.text.trim().is_empty() {
            let why =
                match self.finish {
                    Some(Finish::Length) => format!(
                    "it spent the whole output budget{} before writing any text; raise max_tokens",
                    max_tokens.map(|m| format!(" of {m} tokens")).unwrap_or_default()
                ),
                    _ => format!("finish reason {raw}"),
                };
            return Err(AiError::Empty { provider, why });
        }
        Ok(AiReply {
            text: self.text,
            finish: match self.finish {
                Some(Finish::Length) => Finish::Length,
                _ => Finish::Stop,
            },
            usage: self.usage,
        })
    }
}

/// One provider's streamed answer, decoded event by event.
pub trait Decoder {
    /// Reads one event: visible text goes to `deltas`; `Ok(true)` when it was the terminator.
    fn event(&mut self, ev: &SseEvent, deltas: &mut Vec<String>) -> Result<bool, StreamFault>;
    /// Whether the connection closing now (before any terminator) ends the answer properly.
    /// OpenAI-style and Anthropic streams need their terminator (so: no); a Gemini stream has
    /// none and is complete once a chunk carried its finish reason (or a prompt block).
    fn complete_at_eof(&self) -> bool {
        false
    }
    /// Everything read so far.
    fn outcome(&mut self) -> &mut Outcome;
}

/// A stream that reported a failure instead of (more) text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFault {
    /// An error event / an `error` object in a data event.
    Provider(ProviderError),
    /// Data that is not what the provider sends.
    Malformed(String),
}

/// Parses a whole (non-streamed) answer body like one data event.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, StreamFault> {
    parse_data(&String::from_utf8_lossy(body))
}

/// Parses one data event's JSON, first checking it for a top-level `error`.
pub fn parse_data<T: serde::de::DeserializeOwned>(data: &str) -> Result<T, StreamFault> {
    let v: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| StreamFault::Malformed(format!("it sent data that is not JSON ({e})")))?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(StreamFault::Provider(ProviderError::from_value(v)));
    }
    serde_json::from_value(v)
        .map_err(|e| StreamFault::Malformed(format!("it sent JSON of an unexpected shape ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(text: &str, finish: Finish) -> Outcome {
        Outcome {
            text: text.into(),
            finish: Some(finish),
            finish_raw: Some(format!("{finish:?}").to_uppercase()),
            ..Outcome::default()
        }
    }

    #[test]
    fn a_normal_answer_becomes_a_reply() {
        let r = outcome("Hi", Finish::Stop)
            .into_reply("OpenAI", None)
            .unwrap();
        assert_eq!((r.text.as_str(), r.finish), ("Hi", Finish::Stop));
    }

    #[test]
    fn an_answer_cut_at_max_tokens_is_still_a_reply() {
        let r = outcome("Hi", Finish::Length)
            .into_reply("OpenAI", None)
            .unwrap();
        assert_eq!(r.finish, Finish::Length);
    }

    #[test]
    fn an_empty_answer_is_an_error_that_says_why() {
        let e = outcome("  ", Finish::Stop)
            .into_reply("Gemini", None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Gemini sent an empty reply (finish reason STOP)."
        );
        let e = outcome("", Finish::Length)
            .into_reply("Gemini", Some(64))
            .unwrap_err();
        assert!(e.to_string().contains("raise max_tokens"), "{e}");
    }

    #[test]
    fn a_filtered_answer_is_a_safety_block() {
        let e = outcome("par", Finish::Filter)
            .into_reply("OpenAI", None)
            .unwrap_err();
        assert!(
            matches!(&e, AiError::Blocked { partial, .. } if partial == "par"),
            "{e:?}"
        );
        assert!(e.to_string().contains("safety"), "{e}");
    }

    #[test]
    fn a_refusal_is_shown_as_a_block() {
        let o = Outcome {
            refusal: Some("I can't help with that.".into()),
            finish: Some(Finish::Stop),
            ..Outcome::default()
        };
        let e = o.into_reply("OpenAI", None).unwrap_err();
        assert!(
            e.to_string()
                .contains("the model refused: I can't help with that."),
            "{e}"
        );
    }

    #[test]
    fn a_finish_word_is_noted_unless_empty_and_the_last_one_counts() {
        let of = |raw: &str| {
            if raw == "length" {
                Finish::Length
            } else {
                Finish::Stop
            }
        };
        let mut o = Outcome::default();
        o.note_finish(Some(String::new()), of);
        assert_eq!((o.finish, o.finish_raw.as_deref()), (None, None));
        o.note_finish(Some("stop".into()), of);
        o.note_finish(None, of);
        assert_eq!(o.finish, Some(Finish::Stop));
        o.note_finish(Some("length".into()), of);
        assert_eq!(
            (o.finish, o.finish_raw.as_deref()),
            (Some(Finish::Length), Some("length"))
        );
    }

    #[test]
    fn a_data_event_with_an_error_is_a_fault() {
        let f = parse_data::<serde_json::Value>(
            r#"{"error":{"message":"boom","type":"server_error"}}"#,
        )
        .unwrap_err();
        assert!(matches!(f, StreamFault::Provider(p) if p.message == "boom"));
        assert!(matches!(
            parse_data::<serde_json::Value>("not json"),
            Err(StreamFault::Malformed(_))
        ));
    }
}
