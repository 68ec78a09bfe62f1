//! What this peer's own chat page calls: who this is, the contacts, a page of a
//! conversation, and the live events.

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

/// # GET /api/v1/conversations/{peer}/messages
pub async fn conversation_messages(
    state: State,
    peer: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, NativeError> {
    let query = web::Query::<PageQuery>::from_query(req.query_string()).map_err(|e| {
        PeerError::Invalid(format!("bad query: {e}; use ?before=SEQ&limit=N (numbers)"))
    })?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(PeerError::Invalid(format!("limit {limit} is not between 1 and 500")).into());
    }
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
