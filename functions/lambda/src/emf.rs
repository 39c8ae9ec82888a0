//! Metrics in Lambda: a `metrics` recorder that writes each recorded value as one CloudWatch Embedded Metric Format
//! line on stdout, the function's log stream. CloudWatch extracts the metrics from the logs: no API call and no SDK
//! on the hot path, and the values are the very ones `metahub serve` exports to Prometheus.
//!
//! Written here rather than taken from a crate: EMF is one documented JSON shape, the router already emits a handful
//! of values per request, and a per-value line needs no flush hook in the Lambda runtime (a buffering recorder
//! would lose what it holds when the sandbox is frozen).

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The CloudWatch namespace of MetaHub's metrics (the dashboard in template.yaml reads it).
pub const NAMESPACE: &str = "MetaHub";

type Sink = Arc<dyn Fn(String) + Send + Sync>;

/// Writes EMF lines to `sink` (stdout in Lambda).
pub struct EmfRecorder {
    namespace: String,
    sink: Sink,
}

impl EmfRecorder {
    pub fn new(namespace: &str, sink: impl Fn(String) + Send + Sync + 'static) -> Self {
        EmfRecorder { namespace: namespace.to_owned(), sink: Arc::new(sink) }
    }

    /// Writes to stdout, one whole line per write so that lines never interleave.
    pub fn stdout() -> Self {
        Self::new(NAMESPACE, |line| {
            let _ = std::io::stdout().lock().write_all(format!("{line}\n").as_bytes());
        })
    }

    fn metric(&self, key: &Key, unit: &'static str) -> Arc<EmfMetric> {
        Arc::new(EmfMetric {
            line: template(&self.namespace, key, unit),
            name: key.name().to_owned(),
            sink: self.sink.clone(),
        })
    }
}

/// The line of `key` without its value: the `_aws` directive, and the labels as dimensions.
fn template(namespace: &str, key: &Key, unit: &str) -> Map<String, Value> {
    let dimensions: Vec<&str> = key.labels().map(|l| l.key()).collect();
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": 0,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dimensions],
                "Metrics": [{"Name": key.name(), "Unit": unit}],
            }],
        }),
    );
    for label in key.labels() {
        line.insert(label.key().to_owned(), Value::from(label.value()));
    }
    line
}

/// CloudWatch's unit for a metric: durations are named `_seconds`, everything else counts.
fn unit_of(key: &Key) -> &'static str {
    if key.name().ends_with("_seconds") { "Seconds" } else { "Count" }
}

struct EmfMetric {
    line: Map<String, Value>,
    name: String,
    sink: Sink,
}

impl EmfMetric {
    fn emit(&self, value: f64) {
        let mut line = self.line.clone();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        if let Some(aws) = line.get_mut("_aws").and_then(Value::as_object_mut) {
            aws.insert("Timestamp".into(), Value::from(now));
        }
        line.insert(self.name.clone(), Value::from(value));
        (self.sink)(Value::Object(line).to_string());
    }
}

impl CounterFn for EmfMetric {
    fn increment(&self, value: u64) {
        self.emit(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.emit(value as f64);
    }
}

impl GaugeFn for EmfMetric {
    fn increment(&self, value: f64) {
        self.emit(value);
    }
    fn decrement(&self, value: f64) {
        self.emit(-value);
    }
    fn set(&self, value: f64) {
        self.emit(value);
    }
}

impl HistogramFn for EmfMetric {
    fn record(&self, value: f64) {
        self.emit(value);
    }
}

impl Recorder for EmfRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.metric(key, unit_of(key)))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.metric(key, "None"))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.metric(key, unit_of(key)))
    }
}

/// Makes EMF on stdout the process's metrics recorder; a second call keeps the first recorder.
pub fn install() {
    let _ = metrics::set_global_recorder(EmfRecorder::stdout());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn each_value_is_one_emf_line_with_its_labels_as_dimensions() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let recorder = EmfRecorder::new("MetaHub", move |line| seen.lock().unwrap().push(line));
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("metahub_pulls_total", "machine_type" => "skylake", "result" => "filtered").increment(1);
            metrics::histogram!("metahub_upstream_request_duration_seconds", "kind" => "head").record(0.25);
            metrics::counter!("metahub_stale_answers_total").increment(1);
        });
        let lines: Vec<Value> = lines.lock().unwrap().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);

        let pull = &lines[0];
        let directive = &pull["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "MetaHub");
        assert_eq!(directive["Dimensions"], json!([["machine_type", "result"]]));
        assert_eq!(directive["Metrics"], json!([{"Name": "metahub_pulls_total", "Unit": "Count"}]));
        assert!(pull["_aws"]["Timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(
            (&pull["machine_type"], &pull["result"], &pull["metahub_pulls_total"]),
            (&json!("skylake"), &json!("filtered"), &json!(1.0))
        );

        let latency = &lines[1];
        assert_eq!(latency["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"], "Seconds");
        assert_eq!(latency["metahub_upstream_request_duration_seconds"], 0.25);
        assert_eq!(lines[2]["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([[]]));
    }
}
