//! Who is calling, and what they may do: callers are users, found by the SHA-256 of the
//! bearer token they present, or of the session cookie a browser presents (only hashes
//! are stored). Which workspaces a caller may see is decided by
//! [`crate::manager::Manager::owned`].
//!
//! Cookie rules: the session cookie is `HttpOnly`, `SameSite=Lax`, `Path=/`, host-only,
//! and `Secure` when the server's public URL is https or the request came through a proxy
//! that says `X-Forwarded-Proto: https`. A request authenticated by it that changes
//! anything (any method but GET, HEAD, OPTIONS) must carry the session's CSRF token in
//! `X-CSRF-Token`; a WebSocket handshake (a GET, but it runs commands) must come from the
//! server's own origin. Bearer-token requests need neither: browsers never add them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The user created at first start; the data dir's token file is its token.
pub const FIRST_ADMIN: &str = "admin";

/// Longest user name: short enough for a column, a log field or a unix login.
pub const MAX_USER_NAME: usize = 32;

/// A user name as [`is_valid_user_name`] accepts it.
pub const USER_NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";

/// The authenticated caller, put in request extensions by the token check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user's name: the key for ownership and per-caller limits (never the token,
    /// which must not be logged).
    pub id: Arc<str>,
    pub admin: bool,
}

impl Caller {
    /// The first-start admin.
    pub fn admin() -> Caller {
        Caller {
            id: FIRST_ADMIN.into(),
            admin: true,
        }
    }

    /// Whether the caller may have the server read files on its own host (image loads from
    /// a path). Everyone else uploads the archive instead.
    pub fn may_read_server_paths(&self) -> bool {
        self.admin
    }

    /// Refuses a repository `source` (a workspace's, a prebuild's, a dotfiles URL) that
    /// git would read from the server's own disk (a path, `file:`) unless the caller is an
    /// admin, with 403 before anything looks at the path, so the refusal tells nothing of
    /// what is there. Other sources are fetched from inside a workspace network.
    pub fn check_source(&self, what: &str, source: &str) -> Result<(), ApiError> {
        if self.may_read_server_paths() || !hearth_node::is_local_source(source) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{what} {source:?} is a path on the server, and only admins may have the server \
             read its own files (user {} is not an admin): push the repository to a git \
             server and give its https, ssh or git URL, or ask an admin",
            self.id
        )))
    }

    /// Refuses a non-admin with 403.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{what} needs an admin token (user {} is not an admin)",
                self.id
            )))
        }
    }

    /// Whether the caller may see and touch a workspace owned by `owner`.
    pub fn may_use(&self, owner: &str) -> bool {
        self.admin || *self.id == *owner
    }
}

/// Callers by token hash, so a token check needs no database query after the first.
///
/// Only found tokens are kept (so at most one entry per user), and any removal or token
/// change empties it. The generation stops a lookup that read the database before such a
/// change from putting what it read back afterwards.
#[derive(Default)]
pub struct TokenCache(std::sync::Mutex<(u64, HashMap<String, Caller>)>);

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, Caller>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, hash: &str) -> Option<Caller> {
        self.lock().1.get(hash).cloned()
    }

    /// Read before a database lookup, handed to [`TokenCache::insert`] after it.
    pub fn generation(&self) -> u64 {
        self.lock().0
    }

    pub fn insert(&self, generation: u64, hash: String, caller: Caller) {
        let mut g = self.lock();
        if g.0 == generation {
            g.1.insert(hash, caller);
        }
    }

    pub fn invalidate(&self) {
        let mut g = self.lock();
        g.0 += 1;
        g.1.clear();
    }
}

/// An admin caller; anyone else is refused with 403 before the handler runs.
pub struct Admin(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized(MISSING_CREDENTIALS))?;
        caller.require_admin("this operation")?;
        Ok(Admin(caller))
    }
}

/// A new API token: 32 random bytes, hex.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// What the database keeps of a token. Tokens are 32 random bytes, so a fast unsalted
/// hash is enough: nobody can guess one to match, and a leaked database gives no token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Checks `^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`, at most [`MAX_USER_NAME`] bytes.
pub fn is_valid_user_name(name: &str) -> bool {
    name.len() <= MAX_USER_NAME && crate::names::is_valid_name(name)
}

pub fn invalid_user_name_message(name: &str) -> String {
    let shown: String = name.chars().take(MAX_USER_NAME + 1).collect();
    let name = if shown.len() < name.len() {
        format!("{shown}...")
    } else {
        shown
    };
    format!(
        "invalid user name {name:?}: use 1 to {MAX_USER_NAME} lowercase letters, digits and \
         '-', starting and ending with a letter or digit"
    )
}

/// What a request without any credential is told.
const MISSING_CREDENTIALS: &str =
    "missing Authorization: Bearer <token> header (or a session cookie: sign in at /)";

/// The browser session's cookie.
pub const SESSION_COOKIE: &str = "hearth_session";

/// The header a session's mutating requests carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a session lasts unless `hearth server --session-ttl` says otherwise.
pub const DEFAULT_SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How browsers sign in: shared by the auth check and the session and OIDC routes.
#[derive(Debug)]
pub struct AuthState {
    settings: std::sync::RwLock<SessionSettings>,
    oidc: std::sync::OnceLock<Arc<crate::oidc::Oidc>>,
}

#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// How long a session lasts from sign-in.
    pub ttl: std::time::Duration,
    /// Whether the server is reached over https (its public URL), so cookies are `Secure`.
    pub https: bool,
    /// Whether `POST /v1/session` takes an API token: always without OIDC, and with it
    /// only if `--token-login` says so.
    pub token_login: bool,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            settings: std::sync::RwLock::new(SessionSettings {
                ttl: DEFAULT_SESSION_TTL,
                https: false,
                token_login: true,
            }),
            oidc: Default::default(),
        }
    }
}

impl AuthState {
    pub fn settings(&self) -> SessionSettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_settings(&self, s: SessionSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The identity provider, once configured (at server start).
    pub fn oidc(&self) -> Option<&Arc<crate::oidc::Oidc>> {
        self.oidc.get()
    }

    pub fn set_oidc(&self, oidc: Arc<crate::oidc::Oidc>) {
        let _ = self.oidc.set(oidc);
    }

    /// Whether cookies set in answer to a request with `headers` are `Secure`.
    pub fn secure(&self, headers: &HeaderMap) -> bool {
        self.settings().https
            || headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
    }

    /// The `Set-Cookie` value that starts a session (`Some(id)`) or ends one (`None`).
    pub fn session_cookie(&self, id: Option<&str>, headers: &HeaderMap) -> HeaderValue {
        let secure = if self.secure(headers) { "; Secure" } else { "" };
        let v = match id {
            Some(id) => format!(
                "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
                self.settings().ttl.as_secs()
            ),
            None => format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
        };
        // Only hex ids and fixed text: always a valid header value.
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, v)| v.trim())
}

/// Whether two secrets are equal, in time that says nothing about where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// Whether the request's `Origin` is the server's own (the origin of its `Host`).
fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    rest.eq_ignore_ascii_case(host)
}

/// Refuses a session's request that could have been forged by another site.
fn check_csrf(req: &Request, session: &crate::manager::sessions::Session) -> Result<(), ApiError> {
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade && !same_origin(headers) {
        return Err(ApiError::forbidden(
            "a WebSocket opened with a session cookie must come from this server's own pages \
             (its Origin must match its Host)",
        ));
    }
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    match headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        Some(given) if same_secret(given.trim(), &session.csrf_token) => Ok(()),
        Some(_) => Err(ApiError::forbidden(
            "wrong X-CSRF-Token header: use the csrf_token of GET /v1/session",
        )),
        None => Err(ApiError::forbidden(
            "missing X-CSRF-Token header: a request made with the session cookie that \
             changes anything must carry the csrf_token of GET /v1/session",
        )),
    }
}

/// Finds the caller by the bearer token's hash, else by the session cookie's (checking
/// its CSRF token); 401 for a missing or unknown credential. A bearer token wins over a
/// cookie: a client that sends one means it.
pub async fn require_token(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = given else {
        return require_session(st, req, next).await;
    };
    // Looked up by hash: the time a lookup takes depends on the hash, which tells an
    // attacker nothing about any stored token.
    match st.manager.authenticate(token).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized("invalid token").into_response(),
        Err(e) => {
            tracing::error!(error = ?e.to_string(), "token lookup failed");
            ApiError::internal("cannot check the token").into_response()
        }
    }
}

async fn require_session(st: AppState, mut req: Request, next: Next) -> Response {
    let Some(id) = cookie(req.headers(), SESSION_COOKIE).map(str::to_string) else {
        return ApiError::unauthorized(MISSING_CREDENTIALS).into_response();
    };
    match st.manager.session(&id).await {
        Ok(Some((caller, session))) => {
            if let Err(e) = check_csrf(&req, &session) {
                return e.into_response();
            }
            req.extensions_mut().insert(caller);
            req.extensions_mut().insert(session);
            next.run(req).await
        }
        Ok(None) => {
            // Expired, ended or its user removed: the browser may as well forget it.
            let mut resp =
                ApiError::unauthorized("session expired or ended: sign in again").into_response();
            let clear = st.auth.session_cookie(None, req.headers());
            resp.headers_mut().insert(header::SET_COOKIE, clear);
            resp
        }
        Err(e) => {
            tracing::error!(error = ?e.to_string(), "session lookup failed");
            ApiError::internal("cannot check the session").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        // Known answer: SHA-256 of "abc".
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(token_hash(&format!(" {a}\n")), token_hash(&a));
    }

    #[test]
    fn token_cache_drops_what_a_change_raced_with() {
        let cache = TokenCache::default();
        let gen = cache.generation();
        cache.insert(gen, "h1".into(), Caller::admin());
        assert_eq!(cache.get("h1"), Some(Caller::admin()));
        // A lookup that started before a removal cannot put its answer back after it.
        let stale = cache.generation();
        cache.invalidate();
        assert_eq!(cache.get("h1"), None);
        cache.insert(stale, "h1".into(), Caller::admin());
        assert_eq!(cache.get("h1"), None);
    }

    #[test]
    fn user_names() {
        for ok in ["a", "alice", "bob-2", "0", &"a".repeat(MAX_USER_NAME)] {
            assert!(is_valid_user_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "-a",
            "a-",
            "a_b",
            "a.b",
            &"a".repeat(MAX_USER_NAME + 1),
        ] {
            assert!(!is_valid_user_name(bad), "{bad}");
        }
    }
}
