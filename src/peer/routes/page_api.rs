//! What this peer's own chat page calls: who this is, the contacts, a page of a
//! conversation, the live events, search (its JSON and its page of results) and a
//! conversation's export, and an AI reply's stop and regenerate (through the proxy).

use super::*;

/// `GET /api/v1/me`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Me {
    pub name: String,
    pub display_name: String,
    pub auto_reply: AutoReplyStats,
}

/// # GET /api/v1/me
pub async fn me(state: State) -> Result<HttpResponse, NativeError> {
    let auto_reply = state
        .auto_reply
        .send(GetAutoReplyStats)
        .await
        .map_err(PeerError::from)?;
    Ok(HttpResponse::Ok().json(Me {
        name: state.name.to_string(),
        display_name: state.display_name.clone(),
        auto_reply,
    }))
}

/// # GET /api/v1/contacts
pub async fn contacts(state: State, proxy: Proxy) -> HttpResponse {
    HttpResponse::Ok().json(contact_list(&state, &proxy).await)
}

/// Query of `GET /api/v1/conversations/{peer}/messages`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// Only messages older than this seq (the `next_before` of the previous page).
    pub before: Option<u64>,
    /// 1 to 500; default 50.
    pub limit: Option<usize>,
}

/// A page's size, as asked (`?limit=`): 1 to 500, 50 when not said.
fn page_limit(asked: Option<usize>) -> Result<usize, PeerError> {
    let limit = asked.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(PeerError::Invalid(format!(
            "limit {limit} is not between 1 and 500"
        )));
    }
    Ok(limit)
}

/// # GET /api/v1/conversations/{peer}/messages
pub async fn conversation_messages(
    state: State,
    peer: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, NativeError> {
    let query = web::Query::<PageQuery>::from_query(req.query_string()).map_err(|e| {
        PeerError::Invalid(format!("bad query: {e}; use ?before=SEQ&limit=N (numbers)"))
    })?;
    let limit = page_limit(query.limit)?;
    let page: HistoryPage = state
        .store
        .send(GetPage {
            peer: peer.into_inner(),
            before: query.before,
            limit,
        })
        .await
        .map_err(PeerError::from)??;
    let page = HistoryPage {
        messages: page
            .messages
            .into_iter()
            .map(|m| crate::peer::views::shown(m, &state.ai))
            .collect(),
        ..page
    };
    Ok(HttpResponse::Ok().json(page))
}

/// # GET /api/v1/events
pub async fn events(state: State) -> Result<impl actix_web::Responder, NativeError> {
    let rx = state
        .updates
        .send(Subscribe { feed: Feed::Page })
        .await
        .map_err(PeerError::from)?;
    Ok(sse::Sse::from_infallible_receiver(rx)
        .with_keep_alive(Duration::from_secs(15))
        .with_retry_duration(Duration::from_secs(2)))
}

/// The longest search text taken.
const MAX_QUERY_CHARS: usize = 200;

/// Query of `GET /api/v1/search` and `GET /search`.
#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    /// The words to find (a part of a message's text, any case).
    pub q: Option<String>,
    /// 1 to 500; default 50.
    pub limit: Option<usize>,
}

/// The search asked by `req`: its text (None when there is none yet) and its limit.
fn search_terms(req: &HttpRequest) -> Result<(Option<String>, usize), PeerError> {
    let query = web::Query::<SearchQuery>::from_query(req.query_string())
        .map_err(|e| PeerError::Invalid(format!("bad query: {e}; use ?q=WORDS&limit=N")))?;
    let limit = page_limit(query.limit)?;
    let q = query.q.as_deref().map(str::trim).unwrap_or("");
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(PeerError::Invalid(format!(
            "the search text is longer than {MAX_QUERY_CHARS} characters: search for a part of it"
        )));
    }
    Ok(((!q.is_empty()).then(|| q.to_string()), limit))
}

async fn search_store(
    state: &PeerState,
    query: String,
    limit: usize,
) -> Result<Vec<StoredMessage>, PeerError> {
    state.store.send(Search { query, limit }).await?
}

/// `GET /api/v1/search`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResults {
    pub query: String,
    /// Newest first.
    pub messages: Vec<StoredMessage>,
}

/// # GET /api/v1/search?q=WORDS&limit=N
/// Messages of every conversation whose text contains WORDS (any case), newest first.
pub async fn search(state: State, req: HttpRequest) -> Result<HttpResponse, NativeError> {
    let (query, limit) = search_terms(&req)?;
    let query =
        query.ok_or_else(|| PeerError::Invalid("no search text: give it as ?q=WORDS".into()))?;
    let messages = search_store(&state, query.clone(), limit).await?;
    Ok(HttpResponse::Ok().json(SearchResults { query, messages }))
}

/// # GET /search?q=WORDS
/// The page of results: each opens its conversation at that message.
pub async fn search_page(state: State, req: HttpRequest) -> HttpResponse {
    let (query, found, status) = match search_terms(&req) {
        Err(e) => (
            None,
            Err(e.to_string()),
            actix_web::ResponseError::status_code(&e),
        ),
        Ok((None, _)) => (None, Ok(Vec::new()), actix_web::http::StatusCode::OK),
        Ok((Some(q), limit)) => match search_store(&state, q.clone(), limit).await {
            Ok(found) => (Some(q), Ok(found), actix_web::http::StatusCode::OK),
            Err(e) => (
                Some(q),
                Err(e.to_string()),
                actix_web::ResponseError::status_code(&e),
            ),
        },
    };
    let markup = views::search_page(&views::SearchData {
        display_name: &state.display_name,
        query: query.as_deref(),
        found: found.as_deref().map_err(String::as_str),
    });
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// Query of `GET /api/v1/conversations/{peer}/export`.
#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    /// `md` (the default) or `json`.
    pub format: Option<String>,
}

/// `GET /api/v1/conversations/{peer}/export?format=json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Export {
    pub me: String,
    pub with: String,
    pub exported_at: String,
    /// Oldest first.
    pub messages: Vec<StoredMessage>,
}

/// # GET /api/v1/conversations/{peer}/export?format=md|json
/// The whole conversation as a file: Markdown to read, or JSON to keep.
pub async fn export(
    state: State,
    peer: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, NativeError> {
    let query = web::Query::<ExportQuery>::from_query(req.query_string())
        .map_err(|e| PeerError::Invalid(format!("bad query: {e}; use ?format=md or json")))?;
    let markdown = match query.format.as_deref().unwrap_or("md") {
        "md" | "markdown" => true,
        "json" => false,
        other => {
            return Err(PeerError::Invalid(format!(
                "format `{other}` is not one this peer exports: use md or json"
            ))
            .into())
        }
    };
    let peer = super::peer_name_of(&peer, "peer")?;
    let messages = state
        .store
        .send(GetHistory { peer: peer.clone() })
        .await
        .map_err(PeerError::from)??;
    let now = crate::wire::now_ms();
    let day = crate::wire::rfc3339_ms(now);
    let file = format!(
        "overlay-{}-{}-{}",
        state.name,
        peer,
        day.get(..10).unwrap_or("")
    );
    let (body, kind, ext) = if markdown {
        let text = views::conversation_markdown(state.name.as_str(), &peer, &messages, now);
        (text, "text/markdown; charset=utf-8", "md")
    } else {
        let export = Export {
            me: state.name.to_string(),
            with: peer,
            exported_at: day,
            messages,
        };
        let text = serde_json::to_string_pretty(&export).map_err(PeerError::storage)?;
        (text, "application/json", "json")
    };
    Ok(HttpResponse::Ok()
        .content_type(kind)
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file}.{ext}\""),
        ))
        .body(body))
}

/// # POST /api/v1/conversations/{peer}/stop
/// Stops the reply AI model `peer` is writing in this conversation (through the proxy, which
/// drops the call upstream); what had arrived is kept and arrives marked as stopped.
/// `{"stopped": false}` when none was being written.
pub async fn stop_reply(
    peer: web::Path<String>,
    proxy: Proxy,
) -> Result<HttpResponse, NativeError> {
    let peer = super::peer_name_of(&peer, "peer")?;
    Ok(HttpResponse::Ok().json(proxy.stop_reply(&peer).await?))
}

/// # POST /api/v1/conversations/{peer}/regenerate
/// Asks AI model `peer` again for its answer to the last message: its memory forgets the last
/// answer, and the new one streams in and arrives like any reply. 202 once asked; the proxy's
/// refusal (not an AI, still writing, nothing to answer) with its status and reason.
pub async fn regenerate(
    peer: web::Path<String>,
    proxy: Proxy,
) -> Result<HttpResponse, NativeError> {
    let peer = super::peer_name_of(&peer, "peer")?;
    let message = proxy.regenerate(&peer).await?;
    Ok(HttpResponse::Accepted().json(Note { message }))
}
