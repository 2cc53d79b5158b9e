package devsync

import (
	"context"
	"fmt"
	"net"
	"time"
)

// AttackerAccept is a man in the middle's accepting leg, for tests only: it
// runs the key exchange with an offering device like an honest accepter,
// but instead of asking a person for the code it uses the code it computed
// itself (it is in this exchange, so it can), and pushes payload. It returns
// the error the offering side reported.
//
// The tests use it to show that the offering device's Confirm step, not the
// code, is what stops such a payload from being used (docs/devsync.md).
func AttackerAccept(ctx context.Context, addr, deviceID, account string, payload []byte) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	s := newSession(ctx, conn, 5*time.Second, orDiscard(nil))
	if _, err := acceptHandshake(s, deviceID, account); err != nil {
		return err
	}
	if err := s.write(s.seal(typePayload, padPayload(payload))); err != nil {
		return err
	}
	f, err := s.read("done", time.Minute, typeDone, typeAbort)
	if err != nil {
		return err
	}
	switch f.typ {
	case typeDone:
		return nil
	case typeAbort:
		return s.peerAbort(f)
	}
	return fmt.Errorf("attacker: unexpected frame 0x%02x", byte(f.typ))
}
