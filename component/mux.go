package component

import (
	"context"
	"encoding/xml"
	"fmt"
	"slices"

	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/disco/info"
	"mellium.im/xmpp/disco/items"
	"mellium.im/xmpp/ping"
)

// An IQHandler answers IQ get and set requests for one payload.
//
// It returns the payload of the result (nil for an empty result), which is
// encoded with encoding/xml, or an error. An error made with Error is sent as
// that stanza error; a decode error from Stanza.Decode as bad-request; any
// other error as internal-server-error, and logged.
type IQHandler interface {
	HandleIQ(ctx context.Context, iq *Stanza) (result any, err error)
}

// IQHandlerFunc adapts a function to IQHandler.
type IQHandlerFunc func(ctx context.Context, iq *Stanza) (any, error)

// HandleIQ calls f.
func (f IQHandlerFunc) HandleIQ(ctx context.Context, iq *Stanza) (any, error) { return f(ctx, iq) }

// A MessageHandler handles messages that carry its payload namespace.
//
// An error answers the message with a message of type error, unless the
// message was itself of type error: those are handed to the handler (a
// bounce of something it sent) and never answered.
type MessageHandler interface {
	HandleMessage(ctx context.Context, m *Stanza) error
}

// MessageHandlerFunc adapts a function to MessageHandler.
type MessageHandlerFunc func(ctx context.Context, m *Stanza) error

// HandleMessage calls f.
func (f MessageHandlerFunc) HandleMessage(ctx context.Context, m *Stanza) error { return f(ctx, m) }

// A PresenceHandler sees every presence stanza sent to the component.
// Errors are logged and, unless the presence was of type error, answered
// with a presence of type error.
type PresenceHandler interface {
	HandlePresence(ctx context.Context, p *Stanza) error
}

// PresenceHandlerFunc adapts a function to PresenceHandler.
type PresenceHandlerFunc func(ctx context.Context, p *Stanza) error

// HandlePresence calls f.
func (f PresenceHandlerFunc) HandlePresence(ctx context.Context, p *Stanza) error { return f(ctx, p) }

// Identity is the XEP-0030 identity the component announces.
type Identity = info.Identity

// mux holds what is registered before Run; it is read-only afterwards, so
// workers read it without locks.
type mux struct {
	iq       map[xml.Name]iqRoute
	message  map[string]MessageHandler // by payload namespace
	msgOrder []string
	presence []PresenceHandler
	features []string
	items    []items.Item
	identity Identity
}

type iqRoute struct {
	h     IQHandler
	label string // for metrics: the payload's local name and namespace
}

func newMux(id Identity) *mux {
	m := &mux{
		iq:       make(map[xml.Name]iqRoute),
		message:  make(map[string]MessageHandler),
		identity: id,
	}
	m.addFeature(disco.NSInfo, disco.NSItems, ping.NS)
	return m
}

func (m *mux) addFeature(ns ...string) {
	for _, f := range ns {
		if !slices.Contains(m.features, f) {
			m.features = append(m.features, f)
		}
	}
}

func (m *mux) handleIQ(name xml.Name, h IQHandler) {
	if _, dup := m.iq[name]; dup {
		panic(fmt.Sprintf("component: two IQ handlers for {%s}%s", name.Space, name.Local))
	}
	m.iq[name] = iqRoute{h: h, label: name.Space + " " + name.Local}
	m.addFeature(name.Space)
}

func (m *mux) handleMessage(ns string, h MessageHandler) {
	if _, dup := m.message[ns]; dup {
		panic("component: two message handlers for " + ns)
	}
	m.message[ns] = h
	m.msgOrder = append(m.msgOrder, ns)
	m.addFeature(ns)
}

// messageRoute picks the handler for a message: the first top-level child,
// in document order, whose namespace has a handler.
func (m *mux) messageRoute(s *Stanza) (MessageHandler, string) {
	for _, c := range s.children {
		if h, ok := m.message[c.name.Space]; ok {
			return h, c.name.Space
		}
	}
	return nil, ""
}

// discoInfo answers disco#info for the component and every address at it.
func (m *mux) discoInfo(_ context.Context, iq *Stanza) (any, error) {
	var q disco.InfoQuery
	if err := iq.Decode(xml.Name{Space: disco.NSInfo, Local: "query"}, &q); err != nil {
		return nil, err
	}
	if q.Node != "" {
		return nil, Errorf("item-not-found", "no such node %q", q.Node)
	}
	feats := make([]info.Feature, len(m.features))
	for i, f := range m.features {
		feats[i] = info.Feature{Var: f}
	}
	return disco.Info{Identity: []info.Identity{m.identity}, Features: feats}, nil
}

type itemsResult struct {
	XMLName xml.Name     `xml:"http://jabber.org/protocol/disco#items query"`
	Node    string       `xml:"node,attr,omitempty"`
	Items   []items.Item `xml:"item"`
}

func (m *mux) discoItems(_ context.Context, iq *Stanza) (any, error) {
	var q itemsResult
	if err := iq.Decode(xml.Name{Space: disco.NSItems, Local: "query"}, &q); err != nil {
		return nil, err
	}
	if q.Node != "" {
		return nil, Errorf("item-not-found", "no such node %q", q.Node)
	}
	return itemsResult{Items: m.items}, nil
}

func pingHandler(context.Context, *Stanza) (any, error) { return nil, nil }
