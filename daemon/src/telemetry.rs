//! Logs, traces and W3C trace-context propagation.
//!
//! Contract:
//!
//! - [`init`] installs the process-wide `tracing` subscriber once: an `EnvFilter` from
//!   `SHAKENFIST_LOG` (always present, so h2/hyper/tonic TRACE events never reach a
//!   layer unasked), a fmt layer writing JSON lines to stdout when stdout is not a
//!   terminal (or `SHAKENFIST_LOG_FORMAT=json`) and text otherwise, and a
//!   `tracing-opentelemetry` layer.
//! - Spans are exported over OTLP/gRPC (tonic, batch exporter) only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the
//!   other standard `OTEL_*` variables (headers, timeout, `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`) apply as the OpenTelemetry SDK defines them. Without an
//!   endpoint the OpenTelemetry layer still runs, without an exporter, so trace context
//!   arriving on a request still flows to the calls the daemon makes.
//! - The global text-map propagator is W3C TraceContext. [`inject_context`],
//!   [`extract_context`] and [`set_parent_from_headers`] always use W3C TraceContext
//!   (`traceparent`/`tracestate`) on an [`http::HeaderMap`], which serves HTTP and gRPC
//!   alike (tonic's `MetadataMap` is `AsRef`/`AsMut<http::HeaderMap>`).
//! - The [`TelemetryGuard`] flushes and shuts down the tracer provider when dropped.
//!
//! Using the helpers:
//!
//! ```ignore
//! // gRPC server (tonic): make each request's span a child of the caller's.
//! tonic::transport::Server::builder()
//!     .trace_fn(|request| {
//!         let span = tracing::info_span!("grpc", uri = %request.uri());
//!         sf_daemon::telemetry::set_parent_from_headers(&span, request.headers());
//!         span
//!     })
//!
//! // gRPC client (tonic): an interceptor carries the current span's context.
//! let client = FooClient::with_interceptor(channel, |mut request: tonic::Request<()>| {
//!     sf_daemon::telemetry::inject_context(request.metadata_mut().as_mut());
//!     Ok(request)
//! });
//!
//! // HTTP server (axum): a middleware creating the request span.
//! async fn trace(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
//!     let span = tracing::info_span!("http", method = %request.method(), uri = %request.uri());
//!     sf_daemon::telemetry::set_parent_from_headers(&span, request.headers());
//!     next.run(request).instrument(span).await
//! }
//! ```
//!
//! The parent must be set before the span is first entered (or its context read): set
//! it right after creating the span.

use std::io::IsTerminal;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};

use crate::config::{LogFormat, TelemetryArgs};

/// The standard variable that switches OTLP span export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The standard traces-only variant of [`OTLP_ENDPOINT_ENV`].
pub const OTLP_TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `SHAKENFIST_LOG` is not a valid filter.
    #[error("invalid log filter {filter:?} (SHAKENFIST_LOG): {source}")]
    ParseFilter {
        /// The filter as given.
        filter: String,
        /// The parser's complaint.
        #[source]
        source: filter::ParseError,
    },
    /// OTLP export was requested outside a Tokio runtime (the tonic client needs one).
    #[error(
        "OTLP export ({OTLP_ENDPOINT_ENV}) needs a Tokio runtime: call telemetry::init inside one"
    )]
    NoRuntime,
    /// The OTLP exporter rejected its configuration (e.g. a malformed endpoint, or https
    /// without a TLS feature).
    #[error("cannot build the OTLP span exporter: {0}")]
    BuildExporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber or logger is already installed.
    #[error("cannot install the tracing subscriber: {0}")]
    InstallSubscriber(#[source] tracing_subscriber::util::TryInitError),
}

/// Keeps span export alive; dropping it flushes pending spans and shuts the exporter down.
///
/// Drop it at the end of `main`, on a multi-threaded runtime or after the runtime's work
/// is done: the flush blocks the dropping thread while the exporter talks gRPC.
#[derive(Debug)]
#[must_use = "dropping the guard shuts span export down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl TelemetryGuard {
    /// True when spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("telemetry: shutting down the tracer provider failed: {err}");
        }
    }
}

/// True when an OTLP traces endpoint is configured in the environment.
pub fn otlp_endpoint_configured() -> bool {
    [OTLP_TRACES_ENDPOINT_ENV, OTLP_ENDPOINT_ENV]
        .iter()
        .any(|key| std::env::var_os(key).is_some_and(|value| !value.is_empty()))
}

/// Installs logging and tracing for the daemon `service_name` (see the module docs).
///
/// Call once, early in `main` and inside the Tokio runtime when OTLP export may be on.
pub fn init(service_name: &str, args: &TelemetryArgs) -> Result<TelemetryGuard, TelemetryError> {
    let env_filter = EnvFilter::builder()
        .parse(&args.log_filter)
        .map_err(|source| TelemetryError::ParseFilter {
            filter: args.log_filter.clone(),
            source,
        })?;
    let stdout_is_tty = std::io::stdout().is_terminal();
    let json = match args.log_format {
        LogFormat::Auto => !stdout_is_tty,
        LogFormat::Json => true,
        LogFormat::Text => false,
    };

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(service_name.to_owned())
            .build(),
    );
    let exporting = otlp_endpoint_configured();
    if exporting {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TelemetryError::NoRuntime);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(TelemetryError::BuildExporter)?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();

    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service_name.to_owned()))
        // The exporter's own transport must not produce spans about exporting spans.
        .with_filter(filter::filter_fn(|metadata| {
            !is_transport_noise(metadata.target())
        }));
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
    });
    let text_layer = (!json).then(|| tracing_subscriber::fmt::layer().with_ansi(stdout_is_tty));

    tracing_subscriber::registry()
        .with(env_filter)
        .with(json_layer)
        .with(text_layer)
        .with(otel_layer)
        .try_init()
        .map_err(TelemetryError::InstallSubscriber)?;

    Ok(TelemetryGuard {
        provider,
        exporting,
    })
}

/// Targets whose spans are the export machinery itself.
fn is_transport_noise(target: &str) -> bool {
    [
        "h2",
        "hyper",
        "hyper_util",
        "tonic",
        "tower",
        "opentelemetry",
    ]
    .iter()
    .any(|crate_name| {
        target
            .strip_prefix(crate_name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Writes the current span's trace context into `headers` as W3C `traceparent` (and
/// `tracestate`). Does nothing when there is no sampled, valid current span.
pub fn inject_context(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Reads a W3C trace context from `headers`. The result holds no valid span context
/// when the headers carry none (or a malformed one).
pub fn extract_context(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the remote span named in `headers`, if any.
///
/// Call it right after creating `span` and before entering it; once a span has started
/// its parent can no longer change (that failure, and a missing OpenTelemetry layer, are
/// logged at debug level and otherwise ignored).
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    let cx = extract_context(headers);
    if !cx.span().span_context().is_valid() {
        return;
    }
    if let Err(err) = span.set_parent(cx) {
        tracing::debug!(error = %err, "cannot set the remote parent of a span");
    }
}

/// [`Injector`] over an [`http::HeaderMap`].
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// [`Extractor`] over an [`http::HeaderMap`].
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber with only the OpenTelemetry layer, backed by a real SDK provider.
    fn subscriber(provider: &SdkTracerProvider) -> impl tracing::Subscriber + Send + Sync {
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("sf-daemon-test")))
    }

    #[test]
    fn inject_then_extract_round_trips_the_trace_id() {
        let provider = SdkTracerProvider::builder().build();
        tracing::subscriber::with_default(subscriber(&provider), || {
            let client = tracing::info_span!("client_call");
            let _entered = client.enter();
            let sent = client.context().span().span_context().clone();
            assert!(sent.is_valid());

            let mut headers = HeaderMap::new();
            inject_context(&mut headers);
            let traceparent = headers
                .get("traceparent")
                .expect("traceparent injected")
                .to_str()
                .unwrap();
            assert!(
                traceparent.contains(&sent.trace_id().to_string()),
                "{traceparent}"
            );

            let received = extract_context(&headers);
            let received = received.span().span_context().clone();
            assert!(received.is_remote());
            assert_eq!(received.trace_id(), sent.trace_id());
            assert_eq!(received.span_id(), sent.span_id());
        });
    }

    #[test]
    fn set_parent_from_headers_joins_the_remote_trace() {
        let provider = SdkTracerProvider::builder().build();
        let mut headers = HeaderMap::new();
        let sent = tracing::subscriber::with_default(subscriber(&provider), || {
            let client = tracing::info_span!("client_call");
            let _entered = client.enter();
            inject_context(&mut headers);
            client.context().span().span_context().trace_id()
        });
        // A separate "process": a fresh subscriber with no knowledge of the client span.
        let provider = SdkTracerProvider::builder().build();
        tracing::subscriber::with_default(subscriber(&provider), || {
            let server = tracing::info_span!("server_handler");
            set_parent_from_headers(&server, &headers);
            assert_eq!(server.context().span().span_context().trace_id(), sent);

            let unrelated = tracing::info_span!("no_headers");
            set_parent_from_headers(&unrelated, &HeaderMap::new());
            assert_ne!(unrelated.context().span().span_context().trace_id(), sent);
        });
    }

    #[test]
    fn no_current_span_injects_nothing_and_garbage_extracts_nothing() {
        let mut headers = HeaderMap::new();
        inject_context(&mut headers);
        assert!(headers.is_empty());

        headers.insert("traceparent", HeaderValue::from_static("00-nonsense-01"));
        assert!(!extract_context(&headers).span().span_context().is_valid());
    }

    #[test]
    fn transport_noise_targets() {
        assert!(is_transport_noise("h2::codec"));
        assert!(is_transport_noise("hyper"));
        assert!(is_transport_noise("tonic::transport"));
        assert!(!is_transport_noise("h2o"));
        assert!(!is_transport_noise("sf_database::store"));
    }
}
