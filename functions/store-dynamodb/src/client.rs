//! The AWS configuration and HTTPS client every MetaHub AWS client starts from: the standard environment, short
//! timeouts, and the SDK's hyper client on ring, connecting on first use.

use aws_sdk_dynamodb::config::BehaviorVersion;
use aws_sdk_dynamodb::config::{HttpClient, RuntimeComponents, SharedHttpClient};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{HttpConnectorSettings, SharedHttpConnector};
use std::time::Duration;

/// The AWS configuration every MetaHub client loads once: the standard environment (`AWS_REGION`, credentials
/// chain, `AWS_ENDPOINT_URL` for LocalStack or moto), `us-east-1` when no region is configured, and timeouts short
/// enough that an unreachable endpoint answers `UNAVAILABLE` within seconds.
pub async fn aws_config_from_env() -> aws_config::SdkConfig {
    aws_config_with_operation_timeout(Duration::from_secs(20)).await
}

/// [`aws_config_from_env`] with every operation (retries included) bounded by `operation`: a Lambda function
/// passes the share of its own timeout it can give the store. An attempt gets half of it, so one retry fits.
pub async fn aws_config_with_operation_timeout(operation: Duration) -> aws_config::SdkConfig {
    let config = aws_defaults()
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3).min(operation / 2))
                .operation_attempt_timeout(Duration::from_secs(5).min(operation / 2))
                .operation_timeout(operation)
                .build(),
        )
        .load()
        .await;
    // The loader's own region chain (environment, profile, IMDS) is the one built with `https_client`.
    match config.region() {
        Some(_) => config,
        None => config.into_builder().region(aws_config::Region::new("us-east-1")).build(),
    }
}

/// `aws_config::defaults` with [`https_client`]: the start of every AWS configuration MetaHub loads.
pub fn aws_defaults() -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest()).http_client(https_client())
}

/// The SDK's default HTTPS client (hyper, rustls, the system's roots, proxies from the environment) on ring instead
/// of aws-lc-rs: the provider reqwest uses too (`metahub_upstream::http_client_builder`), so each binary carries one
/// crypto library, ~0.5 MiB less in each Lambda zip (docs/bench.md). Connectors are built on first use only.
pub fn https_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let client = aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            aws_smithy_http_client::ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(aws_smithy_http_client::proxy::ProxyConfig::from_env()));
        connector.build()
    });
    SharedHttpClient::new(ConnectOnFirstUse(client))
}

/// The SDK's hyper client builds a throwaway connector when each service client is created (to load the CA store
/// early), and each connector parses the whole CA store again: four parses in a registry function's init. Without
/// that early build, each process parses it once, when it first connects (docs/bench.md).
#[derive(Debug)]
struct ConnectOnFirstUse(SharedHttpClient);

impl HttpClient for ConnectOnFirstUse {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}
