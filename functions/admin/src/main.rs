//! The admin function. Its API is not there yet: every request is answered `UNSUPPORTED`, and it needs no
//! configuration (no store, no secrets) until it has one.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    metahub_lambda::init_tracing();
    metahub_lambda::serve(metahub_lambda::admin_router()).await
}
