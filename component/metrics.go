package component

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the component's Prometheus instruments. Names follow the
// Prometheus conventions: clinkd_ prefix, _total for counters, base units.
type Metrics struct {
	LinkUp         prometheus.Gauge
	Reconnects     prometheus.Counter
	LinkFailures   *prometheus.CounterVec // by stage: dial, tls, handshake, stream, keepalive
	StanzasIn      *prometheus.CounterVec // by kind
	StanzasOut     *prometheus.CounterVec // by kind
	HandlerSeconds *prometheus.HistogramVec
	Errors         *prometheus.CounterVec // stanza errors sent, by condition
	Panics         prometheus.Counter
	// Refused counts stanzas answered resource-constraint before any
	// handler saw them: "sender" (the sender's queue was full), "total"
	// (the pool was full), "late" (its deadline passed in the queue),
	// "dropped" (refused, but the refusal queue was full too).
	Refused *prometheus.CounterVec
}

// NewMetrics makes the instruments and registers them with reg, which may be
// nil for instruments that nobody scrapes (tests, benchmarks).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		LinkUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clinkd_link_up",
			Help: "1 while the XEP-0114 link to the XMPP server is established, else 0.",
		}),
		Reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clinkd_link_reconnects_total",
			Help: "Times the link was established again after it had been lost.",
		}),
		LinkFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_link_failures_total",
			Help: "Link attempts or links that ended in failure, by stage (dial, tls, handshake, stream, keepalive).",
		}, []string{"stage"}),
		StanzasIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_stanzas_in_total",
			Help: "Stanzas received from the XMPP server, by kind.",
		}, []string{"kind"}),
		StanzasOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_stanzas_out_total",
			Help: "Stanzas sent to the XMPP server, by kind.",
		}, []string{"kind"}),
		HandlerSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "clinkd_handler_duration_seconds",
			Help:    "Time a feature handler took for one stanza, by handler.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100µs .. 26s
		}, []string{"handler"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_stanza_errors_total",
			Help: "Stanza errors sent in reply, by condition.",
		}, []string{"condition"}),
		Panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clinkd_handler_panics_total",
			Help: "Handler panics recovered (each is a bug).",
		}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_stanzas_refused_total",
			Help: "Stanzas refused with resource-constraint before any handler saw them, by reason (sender, total, late, dropped).",
		}, []string{"reason"}),
	}
	// The series alerts watch exist from the start, at zero, so that an
	// alert on their rate sees 0 rather than nothing.
	for _, stage := range []string{"dial", "tls", "handshake", "stream", "keepalive"} {
		m.LinkFailures.WithLabelValues(stage)
	}
	for _, reason := range []string{refusedSender, refusedTotal, "late", "dropped"} {
		m.Refused.WithLabelValues(reason)
	}
	m.Errors.WithLabelValues("internal-server-error")
	// Traffic by kind exists from the start too: the counter is raised
	// after the write, so a scrape can otherwise come before the first.
	for _, kind := range []Kind{KindIQ, KindMessage, KindPresence} {
		m.StanzasIn.WithLabelValues(string(kind))
		m.StanzasOut.WithLabelValues(string(kind))
	}
	if reg != nil {
		reg.MustRegister(m.LinkUp, m.Reconnects, m.LinkFailures, m.StanzasIn,
			m.StanzasOut, m.HandlerSeconds, m.Errors, m.Panics, m.Refused)
	}
	return m
}
