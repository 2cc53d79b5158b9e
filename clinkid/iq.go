package clinkid

import (
	"context"
	"encoding/xml"
	"errors"

	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/extensions/clinkidxml"
)

// Register routes the entitlements IQ (urn:clinkme:clinkid:0) on c: a
// device asks for the entitlements of its own account, named by the
// sender's address, which the XMPP server stamps.
func (s *Service) Register(c *component.Component) {
	c.HandleIQ(xml.Name{Space: clinkidxml.NS, Local: "entitlements"}, component.IQHandlerFunc(s.handleEntitlements))
}

func (s *Service) handleEntitlements(ctx context.Context, iq *component.Stanza) (any, error) {
	var req clinkidxml.Entitlements
	if err := iq.Decode(xml.Name{Space: clinkidxml.NS, Local: "entitlements"}, &req); err != nil {
		return nil, err
	}
	if iq.Type != string(stanza.GetIQ) {
		return nil, component.Error(stanza.BadRequest, "entitlements are read with an IQ get")
	}
	if iq.From.Domainpart() != s.cfg.Domain || iq.From.Localpart() == "" {
		return nil, component.Errorf(stanza.Forbidden, "ClinkID accounts are users of %s", s.cfg.Domain)
	}
	if !s.iqLimit.Allow(iq.From.Bare().String()) {
		return nil, component.Error(stanza.ResourceConstraint, "too many entitlement requests; try again in a minute")
	}
	a, err := s.Show(ctx, iq.From.Localpart())
	if errors.Is(err, ErrNoAccount) {
		return nil, component.Errorf(stanza.ItemNotFound, "%s has no ClinkID account", iq.From.Bare())
	}
	if err != nil {
		return nil, err
	}
	res := clinkidxml.Entitlements{Account: a.Name}
	for _, e := range a.Entitlements {
		res.Items = append(res.Items, clinkidxml.Entitlement{Name: e})
	}
	return res, nil
}
