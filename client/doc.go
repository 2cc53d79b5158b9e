// Package client is the ClinkMe device SDK: what a ClinkMe app links to
// log in to its XMPP server, talk to clinkd, and seal, send, receive and
// verify end-to-end encrypted messages. clinkctl is a thin CLI over it,
// and the project's end-to-end tests use it as a real device would.
// docs/sdk.md is the guide; this comment is the map.
//
// # Two layers
//
// A [Client] is the session with the XMPP server: TLS, login, and then it
// keeps itself connected (reconnection with backoff, XEP-0198 stream
// resumption so that nothing is lost or repeated, keepalive), until
// [Client.Close]. [Client.Err] says why it ended.
//
// A [Device] is a whole ClinkMe device on top of a Client: the key store
// (package keystore: identity, contact keys, key directory pins, one
// file), the verified key directory at clinkd ([KeyDirectory]), and
// clinkd's relay for ordinary and timed messages and receipts.
//
//	c, err := client.Dial(ctx, client.Config{Addr: "chat.example.org:5222", JID: me, Password: token, TLS: &tls.Config{}})
//	dev, err := client.NewDevice(client.DeviceConfig{Client: c, Store: store, Component: clinkd, VerifierKey: vk, VRFKey: vrf})
//	err = dev.Start(ctx) // check (publish on first run) the device's key, announce it to clinkd
//	id, err := dev.Send(ctx, bob, "hello", client.SendOptions{Enhanced: true})
//	for {
//		ev, err := dev.NextEvent(ctx) // *Message, *Receipt, *Expiry, *KeyChanged, *DropError, …
//	}
//
// # Nothing silent
//
// [Device.Send] returns only once clinkd accepted the message, or with
// why not: a [*RefusedError] (clinkd's condition, text and bounds), a
// [*KeyChangeError] (the recipient's key changed: nothing was sent), an
// [*UnconfirmedError] (the answer was lost with the connection). Every
// envelope the device refuses is a [*DropError] event with its id,
// author and reason; every change of the connection a [*Connection]
// event. Errors are matched with errors.Is and errors.As against this
// package's sentinels and types, never by their text.
//
// # Names
//
// One word per concept, in the code, the docs and clinkctl: an envelope
// is standard (sealed for the recipients' identity keys) or enhanced
// (sealed with the per-contact key); both are end-to-end encrypted, and
// ClinkMe Secure is the name of the account entitlement, not of a kind of
// message. The verifier key and the VRF key are the key directory's
// public keys an app ships. An Outgoing message is this user's own, sent
// from another of their devices.
package client
