//! What the OpenAPI document states beyond the handlers' own annotations, applied to every
//! operation at once so none can miss it: 401 wherever the token is needed, the rate
//! limits' 429 there and on the open routes but health and this document, 400/413 for
//! every JSON body, the workspace-name rule on every `{name}` path parameter and the
//! user-name rule on every `{user}`.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::Modify;

use crate::auth::{MAX_USER_NAME, USER_NAME_PATTERN};
use crate::names::MAX_NAME;

/// A workspace name as `names::is_valid_name` accepts it.
pub const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";

pub struct Contract;

/// A refusal with the JSON error body.
fn error_builder(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    )
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(error_builder(description).build())
}

/// The rate limit's refusal, with the `Retry-After` header it carries.
fn rate_limited_response() -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        error_builder("too many requests from this user or address; retry after the given seconds")
            .header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some("seconds to wait"))
                    .build(),
            )
            .build(),
    )
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error_response(description));
}

impl Modify for Contract {
    fn modify(&self, doc: &mut OpenApi) {
        let global_security = doc.security.as_ref().is_some_and(|s| !s.is_empty());
        for (path, item) in doc.paths.paths.iter_mut() {
            // The open routes but these two are limited per client address.
            let unlimited = path == "/v1/health" || path == "/v1/openapi.json";
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                // `security(())` on an operation opts out of the global requirement.
                let open = op
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
                if global_security && !open {
                    add(op, "401", "missing or invalid token");
                }
                if (global_security && !open) || (open && !unlimited) {
                    op.responses
                        .responses
                        .entry("429".to_string())
                        .or_insert_with(rate_limited_response);
                }
                if op.request_body.is_some() {
                    add(
                        op,
                        "400",
                        "the body is not valid JSON of the documented shape",
                    );
                    add(op, "413", "the body is larger than the server accepts");
                }
                let mut named = false;
                let mut user_named = false;
                for p in op.parameters.iter_mut().flatten() {
                    if p.name == "user" && p.parameter_in == ParameterIn::Path {
                        p.schema = Some(RefOr::T(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .pattern(Some(USER_NAME_PATTERN))
                                .min_length(Some(1))
                                .max_length(Some(MAX_USER_NAME))
                                .into(),
                        ));
                        user_named = true;
                    }
                    if p.name == "name" && p.parameter_in == ParameterIn::Path {
                        p.schema = Some(RefOr::T(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .pattern(Some(NAME_PATTERN))
                                .min_length(Some(1))
                                .max_length(Some(MAX_NAME))
                                .into(),
                        ));
                        named = true;
                    }
                }
                if named {
                    add(op, "400", "the name can never be a workspace's");
                }
                if user_named {
                    add(op, "400", "the name can never be a user's");
                }
            }
        }
    }
}
