package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/clinkme/clinkd/client/keystore"
)

// FilePins is a PinStore kept in a JSON file, written atomically on every
// change, so that what a device saw of the directory survives restarts: a
// log rewritten while the device was off is still caught.
//
// Deprecated: a Device keeps its pins in its key store (StorePins), which
// device sync carries; ImportPins moves a pin file's pins there.
type FilePins struct {
	path string
	mu   sync.Mutex
	data pinFile
}

type pinFile struct {
	Checkpoints map[string][]byte `json:"checkpoints"`
	Keys        map[string]KeyPin `json:"keys"`
}

// OpenFilePins opens (or starts) the pin file at path.
func OpenFilePins(path string) (*FilePins, error) {
	p := &FilePins{path: path, data: pinFile{Checkpoints: map[string][]byte{}, Keys: map[string]KeyPin{}}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("client: pins: %w", err)
	}
	if err := json.Unmarshal(b, &p.data); err != nil {
		return nil, fmt.Errorf("client: pins %s: %w", path, err)
	}
	if p.data.Checkpoints == nil {
		p.data.Checkpoints = map[string][]byte{}
	}
	if p.data.Keys == nil {
		p.data.Keys = map[string]KeyPin{}
	}
	return p, nil
}

// save writes the file atomically. Called with mu held.
func (p *FilePins) save() error {
	b, err := json.Marshal(p.data)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p.path), ".pins-*")
	if err != nil {
		return fmt.Errorf("client: pins: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("client: pins: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("client: pins: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("client: pins: %w", err)
	}
	return os.Rename(tmp.Name(), p.path)
}

// Checkpoint implements PinStore.
func (p *FilePins) Checkpoint(origin string) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.data.Checkpoints[origin], nil
}

// SetCheckpoint implements PinStore.
func (p *FilePins) SetCheckpoint(origin string, signed []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.data.Checkpoints[origin] = append([]byte(nil), signed...)
	return p.save()
}

// Key implements PinStore.
func (p *FilePins) Key(bare string) (KeyPin, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k, ok := p.data.Keys[bare]
	return k, ok, nil
}

// SetKey implements PinStore.
func (p *FilePins) SetKey(bare string, pin KeyPin) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.data.Keys[bare] = pin
	return p.save()
}

// StorePins is a PinStore kept in the device's key store (keystore), the
// one state file that device sync carries: a synced device trusts what
// the first one verified. It is what a Device uses unless told otherwise.
type StorePins struct{ Store *keystore.Store }

// Checkpoint implements PinStore.
func (p StorePins) Checkpoint(origin string) ([]byte, error) { return p.Store.Checkpoint(origin), nil }

// SetCheckpoint implements PinStore.
func (p StorePins) SetCheckpoint(origin string, signed []byte) error {
	return p.Store.SetCheckpoint(origin, signed)
}

// Key implements PinStore.
func (p StorePins) Key(bare string) (KeyPin, bool, error) {
	k, ok := p.Store.KeyPin(bare)
	return KeyPin{Fingerprint: k.Fingerprint, Ended: k.Ended, Version: k.Version}, ok, nil
}

// SetKey implements PinStore.
func (p StorePins) SetKey(bare string, pin KeyPin) error {
	return p.Store.SetKeyPin(bare, keystore.KeyPin{Fingerprint: pin.Fingerprint, Ended: pin.Ended, Version: pin.Version})
}

// ImportPins copies what a PinStore kept (a pin file of an older
// clinkctl) into the key store: the checkpoints of origins, and the pins
// of JIDs, where the store has none yet.
func ImportPins(from *FilePins, to *keystore.Store) error {
	from.mu.Lock()
	data := from.data
	from.mu.Unlock()
	for origin, cp := range data.Checkpoints {
		if to.Checkpoint(origin) == nil {
			if err := to.SetCheckpoint(origin, cp); err != nil {
				return err
			}
		}
	}
	for j, pin := range data.Keys {
		if _, ok := to.KeyPin(j); !ok {
			if err := to.SetKeyPin(j, keystore.KeyPin{Fingerprint: pin.Fingerprint, Ended: pin.Ended, Version: pin.Version}); err != nil {
				return err
			}
		}
	}
	return nil
}
