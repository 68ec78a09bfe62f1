//! A hostile relay: a test double holding the real relay's key and certificate (a relay
//! taken over), which every proxy behind it attaches to, and which in turn, request by
//! request: carries honestly, forges an acknowledgement, drops, carries and replays later,
//! keeps one back and carries it after later ones, hands one to another proxy, injects a
//! message of its own signed with its key, and answers a refusal nobody signed. Nothing of that may show to a user but delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_lab::sse;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use overlay::wire::relay::{
    Answered, Carried, ATTACH_HEADER, RELAYED_HEADER, SESSION_HEADER, TARGET_HEADER,
};

/// What the double does to request number k (k counted from 1), in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trick {
    Honest,
    ForgeAck,
    Drop,
    Replay,
    CarryLate,
    Swap,
    Inject,
    Refuse,
}

const SCHEDULE: [Trick; 8] = [
    Trick::Honest,
    Trick::ForgeAck,
    Trick::Replay,
    Trick::Drop,
    Trick::CarryLate,
    Trick::Swap,
    Trick::Inject,
    Trick::Refuse,
];

#[derive(Default)]
struct State {
    streams: HashMap<String, mpsc::Sender<sse::Event>>,
    waiting: HashMap<u64, oneshot::Sender<Answered>>,
    /// Requests kept back, carried after the next honest one.
    late: Vec<(String, Carried)>,
    n: u64,
    k: usize,
    /// How often each trick was played.
    played: HashMap<Trick, usize>,
}

#[derive(Clone)]
pub struct Hostile {
    state: Arc<Mutex<State>>,
    /// The relay's own key (taken with it): it signs what it injects.
    key: Arc<overlay::trust::Identity>,
    /// Where the proxies' keys and sealing keys are (to build a believable injection).
    data_dir: std::path::PathBuf,
}

impl Hostile {
    pub fn new(key: overlay::trust::Identity, data_dir: &std::path::Path) -> Hostile {
        Hostile {
            state: Arc::default(),
            key: Arc::new(key),
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn attached(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state.lock().unwrap().streams.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn played(&self, trick: Trick) -> usize {
        *self.state.lock().unwrap().played.get(&trick).unwrap_or(&0)
    }

    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self.clone()))
            .route("/relay/v1/challenge", web::get().to(challenge))
            .route("/relay/v1/attach", web::get().to(attach))
            .route("/relay/v1/answer", web::post().to(answer))
            .route("/relay/v1/to/{name}", web::post().to(to));
    }

    /// Puts `carried` on `name`'s stream; the receiver's answer, or None (not attached, or no
    /// answer within 3 s).
    async fn carry(&self, name: &str, mut carried: Carried) -> Option<Answered> {
        let (tx, rx) = oneshot::channel();
        let stream = {
            let mut s = self.state.lock().unwrap();
            s.n += 1;
            let n = s.n;
            carried.n = n;
            s.waiting.insert(n, tx);
            s.streams.get(name).cloned()
        }?;
        let event = sse::Data::new_json(&carried)
            .unwrap()
            .event("request")
            .id(carried.n.to_string());
        stream.send(event.into()).await.ok()?;
        actix_rt::time::timeout(Duration::from_secs(3), rx)
            .await
            .ok()?
            .ok()
    }

    fn play(&self, trick: Trick) {
        *self.state.lock().unwrap().played.entry(trick).or_default() += 1;
    }
}

async fn challenge() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "relay": "relay1", "nonce": "anything", "expires_at_ms": overlay::wire::now_ms() + 60_000
    }))
}

/// Anyone may attach (a hostile relay checks nothing); the session is the name.
async fn attach(req: HttpRequest, h: web::Data<Hostile>) -> HttpResponse {
    let proof = req
        .headers()
        .get(ATTACH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| overlay::wire::relay::AttachProof::parse(v).ok());
    let Some(proof) = proof else {
        return HttpResponse::BadRequest().finish();
    };
    let (tx, rx) = mpsc::channel(64);
    let hello = json!({"session": proof.name, "ping_every_ms": 1000});
    tx.try_send(sse::Data::new_json(hello).unwrap().event("attached").into())
        .unwrap();
    h.state.lock().unwrap().streams.insert(proof.name, tx);
    actix_web::Responder::respond_to(
        sse::Sse::from_infallible_receiver(rx).with_keep_alive(Duration::from_secs(1)),
        &req,
    )
    .map_into_boxed_body()
}

async fn answer(
    req: HttpRequest,
    body: web::Json<Answered>,
    h: web::Data<Hostile>,
) -> HttpResponse {
    let _session = req.headers().get(SESSION_HEADER);
    if let Some(tx) = h.state.lock().unwrap().waiting.remove(&body.n) {
        let _ = tx.send(body.into_inner());
    }
    HttpResponse::NoContent().finish()
}

fn relayed(a: Answered) -> HttpResponse {
    let mut out = HttpResponse::build(
        actix_web::http::StatusCode::from_u16(a.status)
            .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
    );
    out.insert_header((RELAYED_HEADER, "1"))
        .content_type("application/json");
    if let Some(ack) = a.ack {
        out.insert_header((overlay::wire::data_plane::ACK_HEADER, ack));
    }
    out.body(a.body)
}

fn unavailable(why: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({"status": "error", "message": why}))
}

async fn to(
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
    h: web::Data<Hostile>,
) -> HttpResponse {
    let name = name.into_inner();
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let signature = header(overlay::trust::request::SIGNATURE_HEADER);
    let target = header(TARGET_HEADER);
    let from = overlay::trust::request::parse(&signature)
        .map(|s| s.origin)
        .unwrap_or_default();
    let carried = Carried {
        n: 0,
        from,
        target: target.clone(),
        signature,
        body: serde_json::value::RawValue::from_string(String::from_utf8_lossy(&body).into())
            .unwrap(),
    };
    let trick = {
        let mut s = h.state.lock().unwrap();
        s.k += 1;
        SCHEDULE[(s.k - 1) % SCHEDULE.len()]
    };
    h.play(trick);
    match trick {
        Trick::Honest => {
            let answer = h.carry(&name, carried).await;
            // What was kept back goes now, after this one.
            let late: Vec<(String, Carried)> = std::mem::take(&mut h.state.lock().unwrap().late);
            for (to, c) in late {
                let _ = h.carry(&to, c).await;
            }
            match answer {
                Some(a) => relayed(a),
                None => unavailable("no answer"),
            }
        }
        Trick::ForgeAck => {
            // "Stored", in the receiver's words, with an acknowledgement nobody signed.
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let ack = match &v {
                Value::Array(all) => json!(all
                    .iter()
                    .map(|e| json!({"id": e["header"]["id"], "duplicate": false}))
                    .collect::<Vec<_>>()),
                one => json!({"id": one["header"]["id"], "duplicate": false}),
            };
            HttpResponse::Ok()
                .insert_header((RELAYED_HEADER, "1"))
                .insert_header((overlay::wire::data_plane::ACK_HEADER, "forged"))
                .json(ack)
        }
        Trick::Drop => unavailable("dropped"),
        // "The receiver refuses this for good", which nobody signed.
        Trick::Refuse => HttpResponse::Forbidden()
            .insert_header((RELAYED_HEADER, "1"))
            .json(json!({"status": "error", "message": "refused for good"})),
        Trick::Replay => {
            let answer = h.carry(&name, carried.clone()).await;
            let _ = h.carry(&name, carried).await;
            match answer {
                Some(a) => relayed(a),
                None => unavailable("no answer"),
            }
        }
        Trick::CarryLate => {
            h.state.lock().unwrap().late.push((name, carried));
            HttpResponse::GatewayTimeout().json(json!({"status": "error", "message": "later"}))
        }
        Trick::Swap => {
            // To someone else attached, and that one's answer back to the sender.
            let other = h
                .attached()
                .into_iter()
                .find(|n| *n != name && *n != carried.from);
            match other {
                Some(other) => match h.carry(&other, carried).await {
                    Some(a) => relayed(a),
                    None => unavailable("no answer"),
                },
                None => unavailable("nobody to swap with"),
            }
        }
        Trick::Inject => {
            // A message "from relay1", sealed for the receiver and signed with the relay's key,
            // in a request the relay signs as its own.
            let e =
                overlay::wire::data_plane::Envelope::text("relay1", &name, "injected by the relay");
            let sealed =
                crate::helpers::sealed(&[e], &crate::helpers::seal_key(&h.data_dir, &name), &h.key);
            let body = serde_json::to_string(&sealed[0]).unwrap();
            let line = overlay::trust::request::RequestLine {
                method: "POST",
                target: "/api/v1/relay",
                body: body.as_bytes(),
            };
            let signature = overlay::trust::request::sign(
                &h.key,
                &line,
                "relay1",
                &name,
                overlay::wire::now_ms(),
            );
            let injected = Carried {
                n: 0,
                from: "relay1".into(),
                target: "/api/v1/relay".into(),
                signature,
                body: serde_json::value::RawValue::from_string(body).unwrap(),
            };
            let _ = h.carry(&name, injected).await;
            unavailable("busy")
        }
    }
}
