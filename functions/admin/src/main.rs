//! The admin function: `/admin/*`, behind an `AWS_IAM` Function URL. Wiring only; see `metahub-lambda`.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    metahub_lambda::init_tracing();
    let app = metahub_lambda::app_or_exit(metahub_http::AdminAuth::Iam).await;
    metahub_lambda::serve(metahub_lambda::admin_router(app)).await
}
