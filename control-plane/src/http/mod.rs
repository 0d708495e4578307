//! The REST API: routes, their OpenAPI description (generated from the handlers' annotations
//! by utoipa, so the document and the router cannot disagree), and shared middleware.

pub mod auth;
pub mod batches;
pub mod chat;
pub mod checks;
pub mod console;
pub mod credits;
pub mod devices;
pub mod error;
pub mod gateway;
pub mod jobs;
pub mod listener;
pub mod networks;
pub mod people;
pub mod relay;
pub mod system;
pub mod workloads;

use crate::http::error::{ApiError, ErrorBody};
use crate::state::{AppState, MAX_COMPONENT_BYTES, MAX_JSON_BODY_BYTES};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Mesh control plane", description = "Networks, people, devices, workloads, jobs and credits."),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    let uploads = OpenApiRouter::new()
        .routes(routes!(workloads::publish, workloads::list))
        .routes(routes!(checks::upload_payload, checks::download_payload))
        .layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::healthz))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(system::control_plane_key))
        .routes(routes!(relay::allow_list))
        .routes(routes!(people::me))
        .routes(routes!(people::create_token, people::list_tokens))
        .routes(routes!(people::revoke_token))
        .routes(routes!(people::accept_invite))
        .routes(routes!(networks::create_network, networks::list_networks))
        .routes(routes!(networks::show_network))
        .routes(routes!(networks::update_policy))
        .routes(routes!(networks::list_members))
        .routes(routes!(networks::audit_log))
        .routes(routes!(networks::update_member, networks::remove_member))
        .routes(routes!(networks::create_invite, networks::list_invites))
        .routes(routes!(networks::revoke_invite))
        .routes(routes!(devices::challenge))
        .routes(routes!(devices::register))
        .routes(routes!(devices::list_devices))
        .routes(routes!(devices::network_peers))
        .routes(routes!(batches::create, batches::list))
        .routes(routes!(batches::show))
        .routes(routes!(batches::cancel))
        .routes(routes!(batches::results))
        .routes(routes!(devices::approve_device))
        .routes(routes!(devices::revoke_device))
        .routes(routes!(devices::release_device))
        .routes(routes!(devices::set_terms))
        .routes(routes!(devices::certificate))
        .routes(routes!(devices::heartbeat))
        .routes(routes!(workloads::show))
        .routes(routes!(workloads::download))
        .routes(routes!(workloads::yank))
        .routes(routes!(credits::balance))
        .routes(routes!(credits::history))
        .routes(routes!(credits::grant))
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::show))
        .routes(routes!(jobs::reassign))
        .routes(routes!(jobs::report_receipt))
        .routes(routes!(gateway::run))
        .routes(routes!(gateway::embeddings))
        .routes(routes!(chat::completions))
        .routes(routes!(gateway::models))
        .routes(routes!(jobs::start))
        .routes(routes!(jobs::complete))
        .routes(routes!(jobs::fail))
        .routes(routes!(checks::vrf_key))
        .routes(routes!(checks::show_check))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
        .merge(uploads)
}

/// The OpenAPI document of every route.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The full router with its state: routes, body limits, the web console, metrics, and a
/// JSON 404 for unknown paths.
pub fn router(state: AppState) -> Router {
    let (router, _) = api_router().split_for_parts();
    router
        .merge(console::router())
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state)
}

/// Bound a request's whole time by `request_timeout`, except the upload of a batch's input:
/// that may be large and its link slow, so it is bounded by the batch's byte cap instead,
/// and by the body timeout, which cuts off a body that stops arriving.
pub async fn request_deadline(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if is_batch_upload(&request) {
        return next.run(request).await;
    }
    match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::request_deadline().into_response(),
    }
}

/// `POST /v1/networks/{network}/batches`.
fn is_batch_upload(request: &Request) -> bool {
    let segments: Vec<&str> = request.uri().path().split('/').collect();
    request.method() == axum::http::Method::POST
        && matches!(segments.as_slice(), ["", "v1", "networks", network, "batches"] if !network.is_empty())
}

async fn no_route() -> ApiError {
    ApiError::no_route()
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await.into_response();
    state
        .metrics
        .record_request(&method, &route, response.status().as_u16());
    response
}
