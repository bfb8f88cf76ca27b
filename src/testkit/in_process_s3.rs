//! aws-sdk-s3 talking to an s3s service in the same process: every request goes through the
//! SDK (signing, serialization, the client policies rtgt uses) and is handed to the service as
//! an HTTP request, with no socket between them. The simulation's in-memory S3 and the tests'
//! s3s-fs are reached this way.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::retries::ErrorKind;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use s3s::service::S3Service;

/// An HTTP client for the SDK (`config.http_client(InProcessS3::from(service))`).
#[derive(Debug, Clone)]
pub struct InProcessS3(S3Service);

impl From<S3Service> for InProcessS3 {
    fn from(service: S3Service) -> Self {
        InProcessS3(service)
    }
}

impl HttpClient for InProcessS3 {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for InProcessS3 {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let service = self.0.clone();
        HttpConnectorFuture::new(async move {
            let response = service.call(into_service_request(request)?).await.map_err(server_error)?;
            response.map(SdkBody::from_body_1_x).try_into().map_err(server_error)
        })
    }
}

/// The SDK's request as the service takes it, with the Host header a socket client would send
/// (the SDK leaves it to the connection; s3s reads the bucket's addressing from it).
fn into_service_request(request: HttpRequest) -> Result<s3s::HttpRequest, ConnectorError> {
    let mut request = request.try_into_http1x().map_err(server_error)?;
    if !request.headers().contains_key(http::header::HOST) {
        let authority = request.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let host = http::HeaderValue::try_from(authority).map_err(server_error)?;
        request.headers_mut().insert(http::header::HOST, host);
    }
    Ok(request.map(s3s::Body::http_body))
}

/// A failure inside the service is what a store's 5xx is: a server error, worth a retry.
fn server_error(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ConnectorError {
    ConnectorError::other(error.into(), Some(ErrorKind::ServerError))
}
