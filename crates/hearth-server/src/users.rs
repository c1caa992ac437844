//! User routes: `GET /v1/me` for anyone, `/v1/users` for admins.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use hearth_api::{CreateUser, ErrorBody, NewUser, Quota, Quotas, UpdateUser, User, UserQuota};

use crate::audit::AuditTarget;
use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::state::{ApiJson, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/users", get(list_users).post(create_user))
        .route("/v1/users/{user}", delete(remove_user).patch(update_user))
        .route(
            "/v1/users/{user}/quota",
            get(user_quota).put(set_user_quota).delete(reset_user_quota),
        )
        .route("/v1/quotas", get(list_quotas))
        .route("/v1/quotas/default", put(set_default_quota))
}

/// The user the token belongs to.
#[utoipa::path(get, path = "/v1/me", responses((status = 200, body = User)))]
pub(crate) async fn me(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(st.manager.me(&caller).await?))
}

/// Every user (admins only).
#[utoipa::path(get, path = "/v1/users",
    responses((status = 200, body = Vec<User>), (status = 403, body = ErrorBody)))]
pub(crate) async fn list_users(
    State(st): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<User>>, ApiError> {
    Ok(Json(st.manager.users().await?))
}

/// Adds a user (admins only). The answer holds the user's API token, shown this once:
/// the server keeps only its SHA-256.
#[utoipa::path(post, path = "/v1/users", request_body = CreateUser,
    responses((status = 201, body = NewUser), (status = 403, body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody)))]
pub(crate) async fn create_user(
    State(st): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<(StatusCode, Extension<AuditTarget>, Json<NewUser>), ApiError> {
    let name = AuditTarget(req.name.clone());
    Ok((
        StatusCode::CREATED,
        Extension(name),
        Json(st.manager.create_user(req).await?),
    ))
}

/// Query of `DELETE /v1/users/{user}`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RemoveUserQuery {
    /// User to hand the removed user's workspaces to; without it, removing a user who
    /// owns workspaces is refused (409).
    #[param(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 32
    )]
    pub reassign_to: Option<String>,
}

/// Removes a user (admins only); its token stops working at once. Refused (409) while it
/// owns workspaces unless `reassign_to` is given, for the caller itself and for the
/// first-start admin `admin` (whose token is the server's token file).
#[utoipa::path(delete, path = "/v1/users/{user}", params(("user" = String, Path), RemoveUserQuery),
    responses((status = 204), (status = 403, body = ErrorBody),
        (status = 404, description = "no such user (or no such reassign_to user)", body = ErrorBody),
        (status = 409, description = "the user owns workspaces (and no other user takes them), \
            is the caller or is admin",
            body = ErrorBody)))]
pub(crate) async fn remove_user(
    State(st): State<AppState>,
    Admin(caller): Admin,
    Path(user): Path<String>,
    query: Result<Query<RemoveUserQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query.map_err(|rej| ApiError::invalid(rej.body_text()))?;
    st.manager
        .remove_user(&caller, &user, q.reassign_to.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a user an admin or a plain user (admins only). Refused (409) for the caller
/// itself and for the first-start admin `admin`, so an admin always remains.
#[utoipa::path(patch, path = "/v1/users/{user}", params(("user" = String, Path)),
    request_body = UpdateUser,
    responses((status = 200, body = User), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the user is the caller or is admin", body = ErrorBody)))]
pub(crate) async fn update_user(
    State(st): State<AppState>,
    Admin(caller): Admin,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(st.manager.set_admin(&caller, &user, req.admin).await?))
}

/// A user's quota in force and their usage: admins ask of anyone, a user of themselves.
#[utoipa::path(get, path = "/v1/users/{user}/quota", params(("user" = String, Path)),
    responses((status = 200, body = UserQuota), (status = 400, body = ErrorBody),
        (status = 404, description = "no such user (or not the caller, for a non-admin)",
            body = ErrorBody)))]
pub(crate) async fn user_quota(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> Result<Json<UserQuota>, ApiError> {
    Ok(Json(st.manager.user_quota(&caller, &user).await?))
}

/// Replaces a user's own quota (admins only); null or missing fields: no limit. Usage
/// already above a new limit stays: only what would grow it is refused (403
/// `quota_exceeded` on create, start, fork, restore and resize).
#[utoipa::path(put, path = "/v1/users/{user}/quota", params(("user" = String, Path)),
    request_body = Quota,
    responses((status = 200, body = UserQuota), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_user_quota(
    State(st): State<AppState>,
    _: Admin,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<Quota>,
) -> Result<Json<UserQuota>, ApiError> {
    Ok(Json(st.manager.set_user_quota(&user, &req).await?))
}

/// Drops a user's own quota, so the default applies to them again (admins only).
#[utoipa::path(delete, path = "/v1/users/{user}/quota", params(("user" = String, Path)),
    responses((status = 200, body = UserQuota), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn reset_user_quota(
    State(st): State<AppState>,
    _: Admin,
    Path(user): Path<String>,
) -> Result<Json<UserQuota>, ApiError> {
    Ok(Json(st.manager.reset_user_quota(&user).await?))
}

/// The default quota and every user's quota and usage (admins only).
#[utoipa::path(get, path = "/v1/quotas",
    responses((status = 200, body = Quotas), (status = 403, body = ErrorBody)))]
pub(crate) async fn list_quotas(
    State(st): State<AppState>,
    _: Admin,
) -> Result<Json<Quotas>, ApiError> {
    Ok(Json(st.manager.quotas().await?))
}

/// Replaces the default quota, for users without one of their own (admins only).
#[utoipa::path(put, path = "/v1/quotas/default", request_body = Quota,
    responses((status = 200, body = Quota), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn set_default_quota(
    State(st): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<Quota>,
) -> Result<Json<Quota>, ApiError> {
    Ok(Json(st.manager.set_default_quota(&req).await?))
}
