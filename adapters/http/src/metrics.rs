//! Prometheus metrics, served at `GET /metrics` in the text exposition format: requests and
//! their latency per route, open real-time connections, events handed to the notifier, and
//! the healing of live delivery: whether the fan-out bus is up, how many connections wait to
//! catch up from the store, and what catching up delivered and cost in store queries.
//!
//! One [`Metrics`] per server (its own registry, so several servers in one process, as in
//! the tests, don't share counters), built in the composition root and shared by every
//! worker through [`AppState`].

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use application::ports::{Event, Notice, Notifier, NotifyError};
use async_trait::async_trait;
use chat_realtime::Healing;
use domain::{ConversationId, UserId};
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::state::AppState;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    connections: IntGauge,
    events: IntCounterVec,
    bus_up: IntGauge,
    healing_backlog: IntGauge,
    healed: IntCounter,
    healed_items: IntCounter,
    stream_checks: IntCounter,
    healed_by_checks: IntCounter,
    healing_reads: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered, by route pattern"),
            &["method", "route", "status"],
        )
        .expect("a valid, constant metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Time to answer an HTTP request")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["method", "route"],
        )
        .expect("a valid, constant metric definition");
        let connections =
            IntGauge::new("realtime_open_connections", "Open /ws and Socket.IO connections on this instance")
                .expect("a valid, constant metric definition");
        let events = IntCounterVec::new(
            Opts::new("realtime_events_total", "Events handed to the notifier, by outcome"),
            &["event", "outcome"],
        )
        .expect("a valid, constant metric definition");
        let bus_up = IntGauge::new(
            "realtime_bus_up",
            "1 while the fan-out bus is subscribed (always 1 on a single instance), else 0",
        )
        .expect("a valid, constant metric definition");
        let healing_backlog = IntGauge::new(
            "realtime_healing_backlog",
            "Connections waiting to catch up from the store, or catching up, after a bus outage",
        )
        .expect("a valid, constant metric definition");
        let healed =
            IntCounter::new("realtime_healed_connections_total", "Catch-ups from the store completed")
                .expect("a valid, constant metric definition");
        let healed_items = IntCounter::new(
            "realtime_healed_deliveries_total",
            "Messages and reads delivered by catching up from the store (lost on the bus)",
        )
        .expect("a valid, constant metric definition");
        let stream_checks = IntCounter::new(
            "realtime_stream_checks_total",
            "Periodic comparisons of the local connections' positions with their users' stream heads",
        )
        .expect("a valid, constant metric definition");
        let healed_by_checks = IntCounter::new(
            "realtime_stream_check_healed_connections_total",
            "Connections found behind their stream's head by the periodic check and made to catch up",
        )
        .expect("a valid, constant metric definition");
        let healing_reads = IntCounter::new(
            "realtime_healing_store_reads_total",
            "Store queries made to heal: by catch-ups, and by the periodic check (one per batch of stream heads)",
        )
        .expect("a valid, constant metric definition");
        let registry = Registry::new();
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(connections.clone()),
            Box::new(events.clone()),
            Box::new(bus_up.clone()),
            Box::new(healing_backlog.clone()),
            Box::new(healed.clone()),
            Box::new(healed_items.clone()),
            Box::new(stream_checks.clone()),
            Box::new(healed_by_checks.clone()),
            Box::new(healing_reads.clone()),
        ] {
            registry.register(collector).expect("each metric is registered once");
        }
        Self {
            registry,
            requests,
            latency,
            connections,
            events,
            bus_up,
            healing_backlog,
            healed,
            healed_items,
            stream_checks,
            healed_by_checks,
            healing_reads,
        }
    }

    fn observe(&self, method: &Method, route: &str, status: u16, seconds: f64) {
        let method = method_label(method);
        let status = status.to_string();
        self.requests.with_label_values(&[method, route, status.as_str()]).inc();
        self.latency.with_label_values(&[method, route]).observe(seconds);
    }

    fn event(&self, event: &Event, delivered: bool) {
        let name = match event {
            Event::NewMessage { .. } | Event::GroupMessage { .. } => "newMessage",
            Event::MessageUpdated { .. } | Event::GroupUpdated { .. } => "messageUpdated",
            Event::Notice { notice: Notice::Read { .. }, .. } => "conversationRead",
            Event::Notice { .. } => "notice",
            Event::ConversationUpdated { .. } => "conversationUpdated",
            Event::MessagesRead { .. } => "messagesRead",
            Event::OnlineUsers(_) => "onlineUsers",
            Event::Presence(_) => "presence",
            Event::Typing { .. } => "typing",
        };
        let outcome = if delivered { "delivered" } else { "dropped" };
        self.events.with_label_values(&[name, outcome]).inc();
    }

    /// Takes the instance's healing figures as they stand.
    fn observe_healing(&self, healing: &Healing) {
        self.bus_up.set(i64::from(healing.bus_up().unwrap_or(true)));
        self.healing_backlog.set(healing.backlog() as i64);
        // Counters only go up: each takes what it lacks of the registry's total.
        self.healed.inc_by(healing.healed().saturating_sub(self.healed.get()));
        self.healed_items.inc_by(healing.delivered().saturating_sub(self.healed_items.get()));
        self.stream_checks.inc_by(healing.checks().saturating_sub(self.stream_checks.get()));
        self.healed_by_checks.inc_by(healing.healed_by_checks().saturating_sub(self.healed_by_checks.get()));
        self.healing_reads.inc_by(healing.store_reads().saturating_sub(self.healing_reads.get()));
    }

    fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into memory fails only on invalid metric names, which are constants here.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The label of a request method: one of a fixed set, so that clients can't make new series
/// (each a few hundred bytes kept for good) by sending made-up methods.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Middleware: counts and times every request under its route pattern (so ids in paths
/// don't create new series); requests that match no route share `unmatched`.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = req.app_data::<web::Data<AppState>>().map(|state| state.metrics.clone());
    let started = Instant::now();
    let method = req.method().clone();
    let response = next.call(req).await;
    if let Some(metrics) = metrics {
        let (route, status) = match &response {
            Ok(r) => (r.request().match_pattern(), r.status().as_u16()),
            Err(e) => (None, e.as_response_error().status_code().as_u16()),
        };
        let route = route.unwrap_or_else(|| "unmatched".to_owned());
        metrics.observe(&method, &route, status, started.elapsed().as_secs_f64());
    }
    response
}

/// `GET /metrics`.
pub async fn render(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.connections.set(state.registry.connection_count() as i64);
    state.metrics.observe_healing(state.registry.healing());
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.metrics.render())
}

/// A [`Notifier`] that counts what passes through it on the way to the real one.
pub struct CountingNotifier {
    inner: Arc<dyn Notifier>,
    metrics: Arc<Metrics>,
}

impl CountingNotifier {
    pub fn new(inner: Arc<dyn Notifier>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl Notifier for CountingNotifier {
    async fn notify(&self, users: &[UserId], event: &Event) -> Result<(), NotifyError> {
        let result = self.inner.notify(users, event).await;
        self.metrics.event(event, result.is_ok());
        result
    }

    async fn notify_group(&self, group: &ConversationId, event: &Event) -> Result<(), NotifyError> {
        let result = self.inner.notify_group(group, event).await;
        self.metrics.event(event, result.is_ok());
        result
    }

    async fn broadcast(&self, event: &Event) -> Result<(), NotifyError> {
        let result = self.inner.broadcast(event).await;
        self.metrics.event(event, result.is_ok());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_lists_requests_by_route_and_events_by_outcome() {
        let metrics = Metrics::new();
        metrics.observe(&Method::POST, "/api/v1/message/send/{receiver_id}", 201, 0.002);
        metrics.event(&Event::OnlineUsers(vec![]), false);
        let text = metrics.render();
        assert!(text.contains(
            r#"http_requests_total{method="POST",route="/api/v1/message/send/{receiver_id}",status="201"} 1"#
        ));
        assert!(text.contains("http_request_duration_seconds_bucket"));
        assert!(text.contains(r#"realtime_events_total{event="onlineUsers",outcome="dropped"} 1"#));
        assert!(text.contains("realtime_open_connections 0"));
    }

    #[test]
    fn the_healing_figures_are_the_instances() {
        let metrics = Metrics::new();
        let healing = Healing::new(1);
        metrics.observe_healing(&healing);
        assert!(metrics.render().contains("realtime_bus_up 1"), "no bus: nothing is missing");
        healing.set_bus_up(false);
        metrics.observe_healing(&healing);
        metrics.observe_healing(&healing);
        let text = metrics.render();
        assert!(text.contains("realtime_bus_up 0"), "{text}");
        assert!(text.contains("realtime_healing_backlog 0"), "{text}");
        assert!(text.contains("realtime_healed_deliveries_total 0"), "{text}");
        assert!(text.contains("realtime_healed_connections_total 0"), "{text}");
        assert!(text.contains("realtime_healing_store_reads_total 0"), "{text}");
    }

    #[test]
    fn made_up_methods_share_one_label() {
        let metrics = Metrics::new();
        for name in ["XQWE", "BREW", &"M".repeat(3000)] {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            metrics.observe(&method, "unmatched", 405, 0.001);
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"http_requests_total{method="OTHER",route="unmatched",status="405"} 3"#),
            "{text}"
        );
        assert!(!text.contains("XQWE") && !text.contains("BREW"));
    }
}
