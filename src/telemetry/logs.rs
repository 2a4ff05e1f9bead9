//! Logging and tracing set-up: JSON lines with the monitoring strategy's fields (README, "Logs")
//! (or pretty text), and spans exported over OTLP when the standard `OTEL_EXPORTER_OTLP_*`
//! variables say where.
//!
//! Spans always get OpenTelemetry ids (so every log line carries `trace_id` and `span_id`), but
//! they leave the process only when an endpoint is configured: no collector, no export, no
//! delay. The exporter batches; [`Guard::shutdown`] flushes it before the process exits, on
//! failure too.

use std::fmt;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::mask_pii;

/// The `service` of every log line and the default OpenTelemetry service name.
pub const SERVICE: &str = "mlpipe";

/// Field names whose values identify a person and are logged only masked: every dataset's
/// primary-key columns (registered by the engine from the pipeline file, see [`mask_fields`]).
static PII_FIELDS: std::sync::RwLock<std::collections::BTreeSet<String>> =
    std::sync::RwLock::new(std::collections::BTreeSet::new());

/// Adds field names whose values are written to logs only masked.
pub fn mask_fields(names: impl IntoIterator<Item = String>) {
    if let Ok(mut set) = PII_FIELDS.write() {
        set.extend(names);
    }
}

fn is_pii(name: &str) -> bool {
    PII_FIELDS.read().is_ok_and(|s| s.contains(name))
}

/// Holds the tracer provider; flush it with [`Guard::shutdown`] before exiting.
pub struct Guard {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Guard {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if self.exporting {
            if let Err(e) = self.provider.force_flush() {
                eprintln!("warning: spans could not be exported: {e}");
            }
        }
        let _ = self.provider.shutdown();
    }
}

/// Where spans go, from the environment (`OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`:
/// `grpc` or `http/protobuf`, the default).
fn exporter_config() -> Option<bool> {
    let set = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    Some(protocol.trim() == "grpc")
}

fn provider(rt: &tokio::runtime::Runtime) -> (SdkTracerProvider, bool) {
    let mut resource =
        opentelemetry_sdk::Resource::builder().with_attributes([opentelemetry::KeyValue::new(
            "service.version",
            crate::CODE_VERSION,
        )]);
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(SERVICE);
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    let Some(grpc) = exporter_config() else {
        return (builder.build(), false);
    };
    let exporter = if grpc {
        // tonic needs the runtime's reactor; the HTTP exporter's blocking client must be built
        // outside it.
        let _entered = rt.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
    } else {
        use opentelemetry_otlp::WithExportConfig;
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
    };
    match exporter {
        Ok(e) => (builder.with_batch_exporter(e).build(), true),
        Err(e) => {
            eprintln!("warning: OTLP export is configured but cannot start ({e}); spans will not be exported");
            (builder.build(), false)
        }
    }
}

/// Installs the global subscriber: JSON lines on stdout (`json`) or pretty text on stderr,
/// filtered by `MLPIPE_LOG` (default `info` for JSON, `warn` for pretty), and the OpenTelemetry
/// layer (every INFO span, whatever the log filter).
pub fn init(json: bool, rt: &tokio::runtime::Runtime) -> Guard {
    let (provider, exporting) = provider(rt);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let default = if json { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("MLPIPE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // `MLPIPE_LOG_SPANS=1`: a line as each span closes, with how long it was busy and idle (the
    // stage's steps: `fit`, `predict`, `estimator`, ...), to see where a stage's time goes.
    let spans = if std::env::var_os("MLPIPE_LOG_SPANS").is_some_and(|v| !v.is_empty() && v != "0") {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .with_span_events(spans)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_writer(std::io::stdout)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_span_events(spans)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(filter)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel)
        .try_init();
    Guard {
        provider,
        exporting,
    }
}

/// One JSON object per event: `timestamp, level, service, function` (the stage, or `mlpipe`
/// outside one), `run_id, trace_id, span_id, model_version` (null when there is none), then
/// the fields of the enclosing spans and of the event. Key fields ([`mask_fields`]) are masked.
pub struct JsonLines;

struct Fields(serde_json::Map<String, serde_json::Value>);

impl Fields {
    fn put(&mut self, field: &Field, v: serde_json::Value) {
        let name = field.name();
        let v = match (&v, is_pii(name)) {
            (serde_json::Value::String(s), true) => serde_json::Value::String(mask_pii(s)),
            (serde_json::Value::Null, _) | (_, false) => v,
            (other, true) => serde_json::Value::String(mask_pii(&other.to_string())),
        };
        self.0.insert(name.to_string(), v);
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f, serde_json::json!(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f, serde_json::json!(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f, serde_json::json!(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f, serde_json::json!(v));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f, serde_json::json!(v));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.put(f, serde_json::json!(format!("{v:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Fields of the enclosing spans, outermost first (JsonFields stores them as JSON).
        let mut spans = serde_json::Map::new();
        let mut leaf = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                leaf = Some(span.id());
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>() {
                    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(f.as_str()) {
                        spans.extend(m.into_iter().filter(|(k, _)| !k.starts_with("otel.")));
                    }
                }
            }
        }
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        let fields = fields.0;
        let (mut trace_id, mut span_id) = (serde_json::Value::Null, serde_json::Value::Null);
        if let Some(id) = leaf {
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            if let Some(cx) = tracing_opentelemetry::get_otel_context(&id, &dispatch) {
                let sc = cx.span().span_context().clone();
                if sc.is_valid() {
                    trace_id = sc.trace_id().to_string().into();
                    span_id = sc.span_id().to_string().into();
                }
            }
        }
        let pick = |k: &str| {
            fields
                .get(k)
                .or_else(|| spans.get(k))
                .cloned()
                .unwrap_or(serde_json::Value::Null)
        };
        let mut o = serde_json::Map::new();
        o.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        o.insert("level".into(), event.metadata().level().as_str().into());
        o.insert("service".into(), SERVICE.into());
        let function = match pick("stage") {
            serde_json::Value::Null => serde_json::Value::String(SERVICE.into()),
            v => v,
        };
        o.insert("function".into(), function);
        o.insert("run_id".into(), pick("run_id"));
        o.insert("trace_id".into(), trace_id);
        o.insert("span_id".into(), span_id);
        o.insert("model_version".into(), pick("model_version"));
        // Then the span fields, overridden by the event's own.
        let mut rest = spans;
        rest.extend(fields);
        for (k, v) in rest {
            o.entry(k).or_insert(v);
        }
        // A span's own line (`MLPIPE_LOG_SPANS`): which span closed.
        if event.metadata().is_span() {
            o.insert("span".into(), event.metadata().name().into());
        }
        o.insert("target".into(), event.metadata().target().into());
        writeln!(writer, "{}", serde_json::Value::Object(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_fields_are_logged_masked() {
        use tracing_subscriber::fmt::MakeWriter;
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Buf {
            type Writer = Buf;
            fn make_writer(&'a self) -> Buf {
                self.clone()
            }
        }
        mask_fields(["account_ref".to_string()]);
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("stage", stage = "validate", run_id = "r1");
            let _g = span.enter();
            tracing::info!(account_ref = "CUST-000001", rows = 3, "duplicate key");
        });
        let line = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["account_ref"], mask_pii("CUST-000001"));
        assert_eq!(v["function"], "validate");
        assert_eq!(v["run_id"], "r1");
        assert_eq!(v["rows"], 3);
        assert!(v["trace_id"].is_null(), "no OpenTelemetry layer here");
        assert!(!line.contains("CUST-000001"));
    }
}
