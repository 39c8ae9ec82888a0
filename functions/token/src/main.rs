//! The token function: `/token`. Wiring only; see `metahub-lambda` for configuration.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    metahub_lambda::init_tracing();
    let app = metahub_lambda::app_or_exit(metahub_http::AdminAuth::Disabled).await;
    metahub_lambda::serve(metahub_http::token_router(app)).await
}
