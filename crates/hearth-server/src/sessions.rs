//! Session routes: signing a browser in with an API token (`POST /v1/session`), reading
//! the session and its CSRF token, logging out, the sign-in methods the dashboard offers,
//! and API tokens for the CLI made from a session (`POST /v1/me/token`).

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_api::{AuthMethods, CreateSession, ErrorBody, NewToken, SessionInfo};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::manager::sessions::Session;
use crate::state::{ApiJson, AppState};

/// Routes anyone may call.
pub(crate) fn public_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/auth", get(auth_methods))
        .route("/v1/session", post(create_session))
}

/// Routes behind the auth check.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/session", get(get_session))
        .route("/v1/session/logout", post(logout))
        .route("/v1/me/token", post(new_token))
}

/// How a browser can sign in: with an API token and/or through the identity provider.
#[utoipa::path(get, path = "/v1/auth", security(()), responses((status = 200, body = AuthMethods)))]
pub(crate) async fn auth_methods(State(st): State<AppState>) -> Json<AuthMethods> {
    Json(AuthMethods {
        token: st.auth.settings().token_login,
        oidc_login: st.auth.oidc().map(|_| crate::oidc::LOGIN_PATH.to_string()),
    })
}

/// Signs a browser in with an API token: sets the `hearth_session` cookie (HttpOnly,
/// SameSite=Lax, Secure over https) and answers the session with its CSRF token. Refused
/// (403) on a server with an identity provider unless it runs with `--token-login`.
#[utoipa::path(post, path = "/v1/session", security(()), request_body = CreateSession,
    responses((status = 201, body = SessionInfo,
        headers(("set-cookie" = String, description = "the session cookie"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "sign in through the identity provider instead",
            body = ErrorBody)))]
pub(crate) async fn create_session(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateSession>,
) -> Result<Response, ApiError> {
    if !st.auth.settings().token_login {
        return Err(ApiError::forbidden(format!(
            "this server signs browsers in through its identity provider: go to {}",
            crate::oidc::LOGIN_PATH
        )));
    }
    let Some(caller) = st.manager.authenticate(&req.token).await? else {
        return Err(ApiError::unauthorized("invalid token"));
    };
    let (id, session) = st
        .manager
        .create_session(&caller, st.auth.settings().ttl)
        .await?;
    let cookie = st.auth.session_cookie(Some(&id), &headers);
    Ok((
        StatusCode::CREATED,
        [(header::SET_COOKIE, cookie)],
        Json(session.info()),
    )
        .into_response())
}

fn session_of(session: Option<Extension<Session>>) -> Result<Session, ApiError> {
    session.map(|Extension(s)| s).ok_or_else(|| {
        ApiError::not_found("no session: this request was authenticated by an API token")
    })
}

/// The caller's browser session: its user, its CSRF token (for `X-CSRF-Token`) and when
/// it ends. 404 for a request authenticated by an API token.
#[utoipa::path(get, path = "/v1/session",
    responses((status = 200, body = SessionInfo), (status = 401, body = ErrorBody),
        (status = 404, description = "the request carried a token, not a session",
            body = ErrorBody)))]
pub(crate) async fn get_session(
    session: Option<Extension<Session>>,
) -> Result<Json<SessionInfo>, ApiError> {
    Ok(Json(session_of(session)?.info()))
}

/// Ends the caller's browser session and clears its cookie (needs `X-CSRF-Token`).
#[utoipa::path(post, path = "/v1/session/logout",
    responses((status = 204, headers(("set-cookie" = String, description = "clears the cookie"))),
        (status = 401, body = ErrorBody),
        (status = 403, description = "missing or wrong X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "the request carried a token, not a session",
            body = ErrorBody)))]
pub(crate) async fn logout(
    State(st): State<AppState>,
    headers: HeaderMap,
    session: Option<Extension<Session>>,
) -> Result<Response, ApiError> {
    let session = session_of(session)?;
    st.manager.end_session(&session).await?;
    let clear = st.auth.session_cookie(None, &headers);
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response())
}

/// A new API token for the caller (for the CLI: `HEARTH_TOKEN`), answered this once; the
/// caller's previous token stops working. Refused (409) for `admin`, whose token is the
/// server's token file.
#[utoipa::path(post, path = "/v1/me/token",
    responses((status = 201, body = NewToken), (status = 401, body = ErrorBody),
        (status = 403, description = "missing or wrong X-CSRF-Token", body = ErrorBody),
        (status = 409, description = "the caller is admin", body = ErrorBody)))]
pub(crate) async fn new_token(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(st.manager.new_token(&caller).await?),
    ))
}
